from __future__ import annotations

from pathlib import Path

import pytest

from umlroot.errors import UmlrootError
from umlroot.kernel import source
from umlroot.kernel.source import AptSource, SourceKind
from umlroot.kernel.version import KernelVersion

DEB822 = """\
Types: deb
# a comment inside a stanza
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

VENDOR_DEB822 = """\
Types: deb
URIs: https://vendor.example/node_20.x
Suites: nodistro
Components: main
"""


def test_deb822() -> None:
    sources = source.parse_deb822_sources(DEB822)
    assert sources[0] == AptSource("http://mirror.example/debian", ("bookworm", "bookworm-updates"),
                                   ("main",), "/usr/share/keyrings/debian-archive-keyring.gpg")
    assert sources[0].is_debian_archive()
    assert not sources[1].is_debian_archive()  # security archive has no linux-source
    assert source.parse_deb822_sources(DEB822.replace("Types: deb\n", "Types: deb-src\n")) == []
    assert source.parse_deb822_sources("Enabled: no\n" + DEB822.split("\n\n")[0]) == []


def test_one_line() -> None:
    text = ("# comment\n"
            "deb-src http://mirror.example/debian bookworm main\n"
            "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"
            "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian trixie main contrib\n")
    sources = source.parse_one_line_sources(text)
    assert [s.uri for s in sources] == ["https://packages.cloud.google.com/apt",
                                        "http://mirror.example/debian"]
    assert sources[1].signed_by == "/k.gpg" and sources[1].suites == ("trixie",)
    assert source.debian_archive_source(sources) == sources[1]


def test_host_sources_prefer_debian_mirror(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "nodesource.sources").write_text(VENDOR_DEB822)
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list").write_text("deb http://cloud.example/apt cloud-sdk main\n")
    found = source.debian_archive_source(source.host_apt_sources(tmp_path))
    assert found is not None and found.uri == "http://mirror.example/debian"


def test_no_debian_source(tmp_path: Path) -> None:
    assert source.debian_archive_source(source.host_apt_sources(tmp_path)) is None


def test_installed_tarballs_newest_usable(tmp_path: Path) -> None:
    for name in ("linux-source-6.1.tar.xz", "linux-source-7.2.tar.xz",
                 "linux-source-7.3.tar.xz", "linux-source-7.3", "other.tar.xz"):
        (tmp_path / name).touch()
    found = source.installed_tarballs(tmp_path)
    assert [t.version for t in found] == [KernelVersion(7, 3), KernelVersion(7, 2),
                                          KernelVersion(6, 1)]
    (tmp_path / "linux-source-7.2.tar.xz").unlink()
    (tmp_path / "linux-source-7.3.tar.xz").unlink()
    assert source.usable_installed_tarball(tmp_path) is None  # 6.1 is too old


def test_classify_source(tmp_path: Path) -> None:
    tree = tmp_path / "linux"
    (tree / "arch" / "um").mkdir(parents=True)
    (tree / "Makefile").write_text("VERSION = 7\nPATCHLEVEL = 3\n")
    assert source.classify_source(tree) is SourceKind.TREE
    tarball = tmp_path / "linux-7.3.tar.xz"
    tarball.touch()
    assert source.classify_source(tarball) is SourceKind.TARBALL
    with pytest.raises(UmlrootError, match="no such file"):
        source.classify_source(tmp_path / "nope")
    with pytest.raises(UmlrootError, match="not a kernel source tree"):
        source.classify_source(tmp_path)
    (tmp_path / "notes.txt").touch()
    with pytest.raises(UmlrootError, match="not a directory or a"):
        source.classify_source(tmp_path / "notes.txt")


def test_private_apt_never_touches_host_state(tmp_path: Path) -> None:
    apt = source.PrivateApt(tmp_path, "http://mirror.example/debian", "sid", None)
    assert (tmp_path / "etc" / "sources.list").read_text() == \
        "deb http://mirror.example/debian sid main\n"
    options = apt.options()
    for value in options[1::2]:
        key, _, path = value.partition("=")
        if key.startswith("Dir::"):
            assert path == "-" or path.startswith(str(tmp_path)), value
    signed = source.PrivateApt(tmp_path / "s", "http://m/debian", "sid", "/k.gpg")
    assert "[signed-by=/k.gpg] " in (tmp_path / "s" / "etc" / "sources.list").read_text()
    assert signed.suite == "sid"


def test_unpack_tarball(tmp_path: Path) -> None:
    import tarfile
    tree = tmp_path / "linux-source-7.3"
    tree.mkdir()
    (tree / "Makefile").write_text("VERSION = 7\nPATCHLEVEL = 3\n")
    tarball = tmp_path / "linux-source-7.3.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tree, arcname="linux-source-7.3")
    top = source.unpack_tarball(tarball, tmp_path / "out")
    assert top == tmp_path / "out" / "linux-source-7.3"
    assert source.tarball_version(tarball) == KernelVersion(7, 3)
