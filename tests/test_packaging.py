"""umlroot as a fakeroot drop-in for packagers, checked with the host's dpkg-deb."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_umlroot

pytestmark = pytest.mark.uml


def test_dpkg_deb_build_gives_root_owned_package(tmp_path: Path) -> None:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb missing (apt-get install dpkg)")
    (tmp_path / "pkg/DEBIAN").mkdir(parents=True)
    (tmp_path / "pkg/usr/bin").mkdir(parents=True)
    (tmp_path / "pkg/DEBIAN/control").write_text(
        "Package: hello\nVersion: 1.0\nArchitecture: all\nMaintainer: A <a@example.org>\n"
        "Description: test package\n")
    shutil.copy("/bin/true", tmp_path / "pkg/usr/bin/hello")
    script = ("chown -R 0:0 pkg && chown 0:12 pkg/usr/bin/hello && "
              "chmod 2755 pkg/usr/bin/hello && dpkg-deb --build pkg hello.deb")
    result = run_umlroot(["run", "--", "sh", "-c", script], cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    listing = subprocess.run(["dpkg-deb", "-c", str(tmp_path / "hello.deb")],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    owners = {line.split()[1] for line in listing}
    assert owners == {"root/root", "root/man"}
    hello = next(line for line in listing if line.endswith("./usr/bin/hello"))
    assert hello.startswith("-rwxr-sr-x root/man")
