"""`umlroot kernel export` / `import`: one build serves another machine,
here another cache with no C compiler on PATH."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_umlroot

from umlroot.kernel import archive

pytestmark = pytest.mark.uml


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "kernel.tar.gz"
    result = run_umlroot(["kernel", "export", str(path)])
    assert result.returncode == 0, result.stderr
    assert b"exported kernel" in result.stderr
    return path


def no_compiler_env(tmp_path: Path) -> dict[str, str]:
    """A fresh cache, and a PATH with every tool but the C compilers."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in os.environ.get("PATH", "").split(":") + ["/usr/sbin", "/sbin"]:
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            if name in ("cc", "gcc", "c99", "c89") or name.startswith(("gcc-", "x86_64-linux-")):
                continue
            if not (bin_dir / name).exists():
                (bin_dir / name).symlink_to(os.path.join(directory, name))
    env = {**os.environ, "PATH": str(bin_dir), "UMLROOT_CACHE": str(tmp_path / "cache")}
    env.pop("CC", None)
    return env


def test_import_then_run_without_a_compiler(exported: Path, tmp_path: Path) -> None:
    env = no_compiler_env(tmp_path)
    assert shutil.which("gcc", path=env["PATH"]) is None
    assert shutil.which("cc", path=env["PATH"]) is None
    started = time.monotonic()
    imported = run_umlroot(["kernel", "import", str(exported)], env=env)
    assert imported.returncode == 0, imported.stderr
    assert b"imported kernel" in imported.stderr and b"boots" in imported.stderr
    work = tmp_path / "work"
    work.mkdir()
    first = run_umlroot(["run", "--", "sh", "-c", "id -u; mknod n c 1 3; stat -c %t,%T n"],
                        cwd=work, env=env)
    elapsed = time.monotonic() - started
    assert (first.returncode, first.stdout) == (0, b"0\n1,3\n"), first.stderr
    # Measured here: well under the 5 s (see docs/ci.md).
    assert elapsed < 5 * 3, f"import + first run took {elapsed:.1f} s"
    info = run_umlroot(["kernel", "info"], env=env)
    assert str(tmp_path / "cache").encode() in info.stdout
    version = read_manifest(exported)["record"]["version"]
    assert f"version: {version}".encode() in info.stdout


def rewrite(source: Path, target: Path, change: dict[str, bytes | None]) -> None:
    """A copy of the archive with some members replaced (None: dropped)."""
    with tarfile.open(source) as old, tarfile.open(target, "w:gz") as new:
        for member in old:
            data = old.extractfile(member)
            assert data is not None
            content = data.read()
            if member.name in change:
                replaced = change[member.name]
                if replaced is None:
                    continue
                content = replaced
            member.size = len(content)
            new.addfile(member, io.BytesIO(content))
        for name, content in change.items():
            if name not in old.getnames() and content is not None:
                info = tarfile.TarInfo(name)
                info.size = len(content)
                new.addfile(info, io.BytesIO(content))


def read_manifest(path: Path) -> dict[str, Any]:
    with tarfile.open(path) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        data: dict[str, Any] = json.loads(member.read())
    return data


def manifest_with(exported: Path, **changes: object) -> bytes:
    data = read_manifest(exported)
    for key, value in changes.items():
        if key == "version":
            data["record"]["version"] = value
        else:
            data[key] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize(("case", "expected"), [
    ("missing", b"no such file"),
    ("not-an-archive", b"is not a kernel archive"),
    ("tampered-kernel", b"linux does not match its checksum"),
    ("no-init", b"no init in the archive"),
    ("extra-member", b"unexpected member '../evil'"),
    ("wrong-version", b"the kernel says it is"),
    ("other-machine", b"holds a kernel for riscv64"),
    ("newer-format", b"archive format 99"),
])
def test_bad_archives_are_one_line_errors(exported: Path, tmp_path: Path, case: str,
                                          expected: bytes) -> None:
    bad = tmp_path / "bad.tar.gz"
    if case == "not-an-archive":
        bad.write_bytes(b"hello\n")
    elif case == "tampered-kernel":
        with tarfile.open(exported) as tar:
            kernel = tar.extractfile("linux")
            assert kernel is not None
            data = bytearray(kernel.read())
        data[-1] ^= 0xFF
        rewrite(exported, bad, {"linux": bytes(data)})
    elif case == "no-init":
        rewrite(exported, bad, {"init": None})
    elif case == "extra-member":
        rewrite(exported, bad, {"../evil": b"x"})
    elif case == "wrong-version":
        rewrite(exported, bad, {"manifest.json": manifest_with(exported, version="9.9.9")})
    elif case == "other-machine":
        rewrite(exported, bad, {"manifest.json": manifest_with(exported, machine="riscv64")})
    elif case == "newer-format":
        rewrite(exported, bad, {"manifest.json": manifest_with(exported, format=99)})
    env = {**os.environ, "UMLROOT_CACHE": str(tmp_path / "cache")}
    result = run_umlroot(["kernel", "import", str(bad)], env=env)
    assert result.returncode == 1
    first, *rest = result.stderr.splitlines()
    assert first.startswith(b"umlroot: ") and expected in first, result.stderr
    assert all(line.startswith(b"umlroot: hint:") for line in rest), result.stderr
    # Nothing half-installed: no kernel, no staging directory.
    kernels = tmp_path / "cache" / "kernels"
    assert not kernels.exists() or list(kernels.iterdir()) == []
    assert not (tmp_path / "evil").exists() and not (tmp_path / "cache" / "evil").exists()


def test_stale_archive_refused_with_require_current(exported: Path, tmp_path: Path) -> None:
    """What a CI cache step runs: a stale archive is rebuilt, never half-used."""
    stale = tmp_path / "stale.tar.gz"
    rewrite(exported, stale, {"manifest.json": manifest_with(exported, init_hash="0" * 16)})
    env = {**os.environ, "UMLROOT_CACHE": str(tmp_path / "cache")}
    refused = run_umlroot(["kernel", "import", "--require-current", str(stale)], env=env)
    assert refused.returncode == 1
    assert b"is out of date: the guest init is not this umlroot's" in refused.stderr
    assert list((tmp_path / "cache" / "kernels").iterdir()) == []
    taken = run_umlroot(["kernel", "import", str(stale)], env=env)
    assert taken.returncode == 0, taken.stderr
    assert b"warning: the guest init is not this umlroot's" in taken.stderr
    assert b"will build its own with the C compiler" in taken.stderr
    current = run_umlroot(["kernel", "import", "--require-current", str(exported)], env=env)
    assert current.returncode == 0, current.stderr


def test_export_of_a_kernel_outside_the_cache_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "linux"
    fake.write_bytes(b"#!/bin/sh\necho 7.3.4\n")
    fake.chmod(0o755)
    result = run_umlroot(["kernel", "export", "--kernel", str(fake), str(tmp_path / "k.tgz")])
    assert result.returncode == 1
    assert b"is not a kernel built by `umlroot kernel build`" in result.stderr.splitlines()[0]
    assert not (tmp_path / "k.tgz").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["linux"]


def test_manifest_round_trip(exported: Path) -> None:
    with tarfile.open(exported) as tar:
        assert tar.getnames() == ["manifest.json", "linux", "init"]
        member = tar.extractfile("manifest.json")
        assert member is not None
        manifest = archive.Manifest.from_json(member.read().decode())
    assert archive.Manifest.from_json(manifest.to_json()) == manifest
    assert manifest.record.patches is not None  # exports always say which patches
