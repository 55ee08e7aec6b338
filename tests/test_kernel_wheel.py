"""`umlroot kernel wheel`: the platform tag read from the binaries, the wheel's
files, and how an installed wheel is found (select order, prebuilt init).

The last test takes the real cached kernel (marked `uml`): wheel, install,
and `umlroot run` with an empty cache and no C compiler on PATH."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import run_umlroot

from umlroot.kernel import guest_init as guestinit
from umlroot.errors import UmlrootError
from umlroot.kernel import archive, build, packaged, select, store, wheel
from umlroot.kernel.fragment import fragment_text
from umlroot.kernel.patches import build_id
from umlroot.kernel.select import Origin

HOST_BINARY = Path(shutil.which("true") or "/bin/true").resolve()


def objdump_glibc(path: Path) -> tuple[int, int]:
    """The newest GLIBC_x.y the binary needs, as binutils sees it."""
    out = subprocess.run(["readelf", "-V", "-W", str(path)], capture_output=True, text=True,
                         check=True).stdout
    found = [(int(a), int(b)) for a, b in re.findall(r"Name: GLIBC_(\d+)\.(\d+)", out)]
    return max(found)


@pytest.mark.skipif(shutil.which("readelf") is None, reason="no readelf to compare with")
def test_glibc_requirement_matches_readelf() -> None:
    needs = wheel.elf_needs(HOST_BINARY)
    assert "libc.so.6" in needs.libraries and not needs.static
    assert needs.glibc() == objdump_glibc(HOST_BINARY)
    major, minor = max(objdump_glibc(HOST_BINARY), wheel.FLOOR)
    assert wheel.platform_tag([HOST_BINARY]) == f"manylinux_{major}_{minor}_x86_64"


def static_binary(tmp_path: Path) -> Path:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler to build a static test binary")
    source = tmp_path / "t.c"
    source.write_text("int main(void) { return 0; }\n")
    binary = tmp_path / "t"
    done = subprocess.run(["cc", "-static", "-o", str(binary), str(source)], check=False,
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("no static libc")
    return binary


def test_static_binaries_get_manylinux_and_musllinux(tmp_path: Path) -> None:
    binary = static_binary(tmp_path)
    assert wheel.elf_needs(binary).static
    assert wheel.platform_tag([binary]) == "manylinux_2_17_x86_64.musllinux_1_1_x86_64"
    # A static init does not lower what a dynamic kernel needs.
    assert wheel.platform_tag([HOST_BINARY, binary]).startswith("manylinux_2_")


def test_libraries_outside_glibc_are_refused() -> None:
    candidates = [Path(p) for p in ("/usr/bin/xz", "/usr/bin/tar", sys.executable)]
    for path in candidates:
        path = path.resolve()
        needs = wheel.elf_needs(path) if path.is_file() else None
        if needs and any(lib not in wheel.GLIBC_LIBRARIES for lib in needs.libraries):
            with pytest.raises(UmlrootError, match="a wheel can only rely on glibc"):
                wheel.platform_tag([path])
            return
    pytest.skip("no binary linking a non-glibc library found")


def test_not_an_elf(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("#!/bin/sh\n")
    with pytest.raises(UmlrootError, match="not a 64-bit little-endian ELF"):
        wheel.elf_needs(tmp_path / "x")


# --- A wheel from a fake cached kernel (a host binary standing in for linux) --------


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("UMLROOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("UMLROOT_KERNEL", raising=False)
    monkeypatch.setattr(select, "SYSTEM_KERNELS", ())
    return tmp_path


def cached(tmp_path: Path, fragment_hash: str, version: str = "7.3.4") -> store.Entry:
    binary = tmp_path / f"linux-{fragment_hash}"
    shutil.copy(HOST_BINARY, binary)
    return build.install(binary, store.Record(
        version=version, fragment_hash=fragment_hash, source="debian linux-source-7.3 test",
        source_id=f"test:{fragment_hash}", smp=True, build_seconds=1.0,
        built_at="2026-12-01T10:20:30+00:00"))


def installed_wheel(whl: Path, target: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip install --target, and that directory on sys.path (as site-packages is)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--disable-pip-version-check", "--target", str(target), str(whl)],
                   check=True)
    monkeypatch.syspath_prepend(str(target))
    return target / packaged.PACKAGE


@pytest.mark.skipif(guestinit.compiler() is None, reason="the wheel carries a built guest init")
def test_wheel_contents_and_install(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    current = build_id(fragment_text())
    entry = cached(isolated, current)
    info = wheel.make_wheel(isolated / "dist", build=2)
    tag = wheel.platform_tag([HOST_BINARY])
    assert info.path.name == f"umlroot_kernel-7.3.4.2-py3-none-{tag}.whl"
    with zipfile.ZipFile(info.path) as whl:
        names = whl.namelist()
        dist_info = "umlroot_kernel-7.3.4.2.dist-info"
        assert f"{dist_info}/RECORD" == names[-1]
        record = list(csv.reader(io.StringIO(whl.read(f"{dist_info}/RECORD").decode())))
        for name, digest, size in record[:-1]:
            data = whl.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert (digest, int(size)) == (f"sha256={expected.decode()}", len(data))
        assert f"Tag: py3-none-{tag}" in whl.read(f"{dist_info}/WHEEL").decode()
        assert "Root-Is-Purelib: false" in whl.read(f"{dist_info}/WHEEL").decode()
        assert "Version: 7.3.4.2" in whl.read(f"{dist_info}/METADATA").decode()
        modes = {i.filename: i.external_attr >> 16 for i in whl.infolist()}
        assert modes["umlroot_kernel/linux"] == modes["umlroot_kernel/init"] == 0o100755
        assert "umlroot_kernel/source/kernel.config" in names  # current build: GPL sources
    # Installed: found, used (the cache is emptied first), its init prebuilt.
    directory = installed_wheel(info.path, isolated / "site", monkeypatch)
    shutil.rmtree(entry.directory)
    shutil.rmtree(isolated / "cache" / "init")
    choice = select.find_kernel()
    assert (choice.origin, choice.path, choice.version) == \
        (Origin.WHEEL, directory / "linux", "7.3.4")
    assert "umlroot-kernel wheel" in choice.reason
    assert guestinit.build_guest_init() == directory / "init"
    found = packaged.find()
    assert found is not None and wheel.installed_files_ok(found) == []


def fake_wheel(isolated: Path, fragment_hash: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed umlroot_kernel package without pip: linux + manifest."""
    directory = isolated / "site" / packaged.PACKAGE
    directory.mkdir(parents=True)
    shutil.copy(HOST_BINARY, directory / "linux")
    record = store.Record(version="7.3.5", fragment_hash=fragment_hash, source="wheel test",
                          source_id="w", smp=True, build_seconds=1.0, built_at="2026-12-01")
    manifest = archive.Manifest(archive.FORMAT, "0.1.0", os.uname().machine, record, "h", {})
    (directory / archive.MANIFEST).write_text(manifest.to_json())
    monkeypatch.syspath_prepend(str(isolated / "site"))
    return directory


@pytest.mark.parametrize(("cache_current", "wheel_current", "expected"), [
    (True, True, Origin.CACHE),    # equally current: the cache, which the user made
    (False, True, Origin.WHEEL),   # a stale cache loses to a current wheel
    (True, False, Origin.CACHE),
    (False, False, Origin.CACHE),  # both stale: the cache, as before wheels existed
    (None, True, Origin.WHEEL),    # no cache at all
    (None, False, Origin.WHEEL),
])
def test_cache_and_wheel_order(isolated: Path, monkeypatch: pytest.MonkeyPatch,
                               cache_current: bool | None, wheel_current: bool,
                               expected: Origin) -> None:
    current = build_id(fragment_text())
    if cache_current is not None:
        cached(isolated, current if cache_current else "0ld0ld0ld0ld")
    fake_wheel(isolated, current if wheel_current else "0ldwhee10000", monkeypatch)
    assert select.find_kernel().origin is expected
    # --kernel and $UMLROOT_KERNEL still come first.
    monkeypatch.setenv("UMLROOT_KERNEL", str(HOST_BINARY))
    assert select.find_kernel().origin is Origin.ENV


def test_wheel_for_another_machine_is_ignored(isolated: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    directory = fake_wheel(isolated, build_id(fragment_text()), monkeypatch)
    text = (directory / archive.MANIFEST).read_text()
    (directory / archive.MANIFEST).write_text(text.replace(os.uname().machine, "riscv64"))
    assert packaged.find() is None
    with pytest.raises(UmlrootError, match="no UML kernel found"):
        select.find_kernel()


def test_damaged_wheel_is_named_by_doctor(isolated: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from umlroot.cli import doctor

    directory = fake_wheel(isolated, build_id(fragment_text()), monkeypatch)
    check = doctor.check_kernel_wheel()
    assert check.status is doctor.Status.FAIL and "linux does not match" in check.detail
    (directory / archive.MANIFEST).write_text("{")
    check = doctor.check_kernel_wheel()
    assert check.status is doctor.Status.FAIL and "manifest" in check.detail


def test_doctor_without_wheel_is_info(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from umlroot.cli import doctor

    monkeypatch.setattr(packaged, "location", lambda: None)
    assert doctor.check_kernel_wheel().status is doctor.Status.INFO


def test_non_executable_kernel_is_one_line(isolated: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    directory = fake_wheel(isolated, build_id(fragment_text()), monkeypatch)
    (directory / "linux").chmod(0o644)
    with pytest.raises(UmlrootError, match="not executable"):
        select.find_kernel()


# --- The real kernel: wheel, install, run with no cache and no compiler --------------


@pytest.mark.uml
def test_wheel_runs_without_cache_or_compiler(tmp_path: Path) -> None:
    from test_kernel_archive import no_compiler_env

    made = run_umlroot(["kernel", "wheel", str(tmp_path / "dist")])
    assert made.returncode == 0, made.stderr
    whl = Path(made.stdout.decode().strip())
    assert re.fullmatch(r"umlroot_kernel-\d+\.\d+\.\d+-py3-none-manylinux_2_\d+_x86_64\.whl",
                        whl.name), whl.name
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--disable-pip-version-check", "--target", str(site), str(whl)], check=True)
    env = no_compiler_env(tmp_path)
    env["PYTHONPATH"] = str(site)
    work = tmp_path / "work"
    work.mkdir()
    started = time.monotonic()
    first = run_umlroot(["run", "--", "id", "-u"], cwd=work, env=env)
    elapsed = time.monotonic() - started
    assert (first.returncode, first.stdout) == (0, b"0\n"), first.stderr
    assert elapsed < 3 * 3, f"first run took {elapsed:.1f} s"  # 3 s target, busy-CI margin
    info = run_umlroot(["kernel", "info"], env=env)
    assert b"origin:  wheel" in info.stdout, info.stdout
    doctor = run_umlroot(["doctor"], env=env, timeout=180)
    assert b"prebuilt, from the umlroot-kernel wheel" in doctor.stdout, doctor.stdout
    assert not (tmp_path / "cache" / "kernels").exists()
