"""Kernel sources over HTTP (download.py, build.plan_source/fetch_source):
a local server in a thread serves a small fake kernel tarball. Nothing here
compiles a kernel: the build is followed up to the unpacked tree."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import os
import re
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_umlroot

from umlroot.errors import UmlrootError
from umlroot.kernel import build, download
from umlroot.kernel import source as ksource
from umlroot.kernel.version import KernelVersion

NAME = "linux-7.3.4.tar.xz"


def fake_tarball() -> bytes:
    """A kernel-shaped tree: the top Makefile says 7.3.4, arch/um exists."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        files = {
            "linux-7.3.4/Makefile": b"# SPDX\nVERSION = 7\nPATCHLEVEL = 3\nSUBLEVEL = 4\n",
            "linux-7.3.4/arch/um/Kconfig": b"# fake\n",
            # Incompressible bytes, so the file spans several read chunks.
            "linux-7.3.4/padding": os.urandom(3 * download.CHUNK // 2),
        }
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


TARBALL = fake_tarball()
SHA256 = hashlib.sha256(TARBALL).hexdigest()


@dataclasses.dataclass
class Behaviour:
    ranges: bool = True  # honour Range requests (206), else always send it all (200)
    cut_after: int | None = None  # first response: close after this many bytes
    requests: list[str | None] = dataclasses.field(default_factory=list)  # Range headers


class Handler(http.server.BaseHTTPRequestHandler):
    behaviour: Behaviour

    def do_GET(self) -> None:
        behaviour = self.server.behaviour  # type: ignore[attr-defined]
        behaviour.requests.append(self.headers.get("Range"))
        if self.path != f"/pub/{NAME}":
            self.send_error(404, "Not Found")
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and behaviour.ranges:
            start = int(match.group(1))
            if start >= len(TARBALL):
                self.send_error(416, "Range Not Satisfiable")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(TARBALL) - 1}/{len(TARBALL)}")
        else:
            self.send_response(200)
        body = TARBALL[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if behaviour.cut_after is not None:
            self.wfile.write(body[:behaviour.cut_after])
            behaviour.cut_after = None
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, Behaviour]]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    behaviour = Behaviour()
    httpd.behaviour = behaviour  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/pub/{NAME}", behaviour
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("UMLROOT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def leftovers(cache: Path) -> list[str]:
    where = cache / "downloads"
    return sorted(p.name for p in where.iterdir()) if where.is_dir() else []


def refused_url() -> str:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/pub/{NAME}"


def test_download_verified(server: tuple[str, Behaviour], cache: Path) -> None:
    url, behaviour = server
    path = download.fetch(url, SHA256)
    assert path == cache / "downloads" / NAME and path.read_bytes() == TARBALL
    assert leftovers(cache) == [NAME]
    # A second fetch uses the verified file: no request.
    assert download.fetch(url, SHA256) == path and len(behaviour.requests) == 1


def one_line(error: UmlrootError) -> str:
    assert "\n" not in error.message and error.hint and "\n" not in error.hint
    return error.message


def test_wrong_checksum(server: tuple[str, Behaviour], cache: Path) -> None:
    url, _ = server
    with pytest.raises(UmlrootError) as caught:
        download.fetch(url, "0" * 64)
    assert "SHA-256 mismatch" in one_line(caught.value) and SHA256 in caught.value.message
    assert leftovers(cache) == []


def test_404(server: tuple[str, Behaviour], cache: Path) -> None:
    url, _ = server
    with pytest.raises(UmlrootError) as caught:
        download.fetch(url.replace(NAME, "linux-9.9.9.tar.xz"), SHA256)
    assert "HTTP 404" in one_line(caught.value)
    assert "--source FILE" in (caught.value.hint or "")
    assert leftovers(cache) == []


def test_no_network(cache: Path) -> None:
    with pytest.raises(UmlrootError) as caught:
        download.fetch(refused_url(), SHA256)
    assert "Connection refused" in one_line(caught.value)
    assert "offline" in (caught.value.hint or "")
    assert leftovers(cache) == []


def test_interrupted_download_resumes(server: tuple[str, Behaviour], cache: Path) -> None:
    url, behaviour = server
    behaviour.cut_after = len(TARBALL) // 3
    with pytest.raises(UmlrootError) as caught:
        download.fetch(url, SHA256)
    assert "interrupted" in one_line(caught.value) and "resume" in (caught.value.hint or "")
    assert leftovers(cache) == [f"{NAME}.part"]  # kept for the next run, never unpacked
    assert download.fetch(url, SHA256).read_bytes() == TARBALL
    assert behaviour.requests == [None, f"bytes={len(TARBALL) // 3}-"]
    assert leftovers(cache) == [NAME]


def test_server_without_ranges_starts_over(server: tuple[str, Behaviour],
                                           cache: Path) -> None:
    url, behaviour = server
    behaviour.ranges = False
    behaviour.cut_after = 1000
    with pytest.raises(UmlrootError):
        download.fetch(url, SHA256)
    assert download.fetch(url, SHA256).read_bytes() == TARBALL
    assert leftovers(cache) == [NAME]


def test_stale_part_larger_than_the_file_starts_over(server: tuple[str, Behaviour],
                                                      cache: Path) -> None:
    url, _ = server
    (cache / "downloads").mkdir(parents=True)
    (cache / "downloads" / f"{NAME}.part").write_bytes(b"x" * (len(TARBALL) + 10))
    assert download.fetch(url, SHA256).read_bytes() == TARBALL  # 416, then from byte 0


def no_debian_host(monkeypatch: pytest.MonkeyPatch, pinned: download.Pinned) -> None:
    """A host whose APT sources name no Debian archive (Ubuntu, say), no /usr/src tarball."""
    monkeypatch.setattr(ksource, "host_apt_sources", lambda *a, **k: [])
    monkeypatch.setattr(ksource, "usable_installed_tarball", lambda *a, **k: None)
    monkeypatch.setattr(download, "PINNED", pinned)


def test_no_debian_archive_builds_the_pinned_tarball(server: tuple[str, Behaviour], cache: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    url, _ = server
    no_debian_host(monkeypatch, download.Pinned("7.3.4", url, SHA256))
    plan = build.plan_source(build.BuildOptions())
    assert plan.kind is ksource.SourceKind.DOWNLOAD and plan.version == KernelVersion(7, 3, 4)
    assert plan.source_id == f"sha256:{SHA256}"
    fetched = build.fetch_source(plan)
    assert fetched.path is not None and fetched.path.read_bytes() == TARBALL
    # The build's next step, then stop: no compile here.
    ws = build.Workspace(tmp_path / "ws", tmp_path / "build.log")
    tree, obj = build.obtain_tree(fetched, ws)
    assert obj is None and KernelVersion.from_makefile(tree / "Makefile") == KernelVersion(7, 3, 4)


def test_pinned_without_checksum_says_what_to_do(cache: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    no_debian_host(monkeypatch, download.Pinned("7.3.4", "https://example.invalid/x.tar.xz", None))
    with pytest.raises(UmlrootError) as caught:
        build.plan_source(build.BuildOptions())
    assert "no Debian archive" in one_line(caught.value)
    assert "--sha256" in (caught.value.hint or "") and "--source FILE" in (caught.value.hint or "")


def test_url_needs_sha256() -> None:
    with pytest.raises(UmlrootError, match="needs --sha256"):
        build.plan_source(build.BuildOptions(url="http://127.0.0.1:1/linux-7.3.4.tar.xz"))


def test_local_file_checked_against_sha256(tmp_path: Path) -> None:
    path = tmp_path / NAME
    path.write_bytes(TARBALL)
    plan = build.plan_source(build.BuildOptions(source=path, sha256=SHA256))
    assert plan.source_id == f"sha256:{SHA256}"
    with pytest.raises(UmlrootError, match="SHA-256 mismatch"):
        build.plan_source(build.BuildOptions(source=path, sha256="1" * 64))


def test_sha256_syntax() -> None:
    assert download.check_sha256(SHA256.upper()) == SHA256
    with pytest.raises(UmlrootError, match="not a SHA-256"):
        download.check_sha256("abc")


# --- The command line: each failure one line and exit 1, nothing left behind -------


needs_tools = pytest.mark.skipif(bool(build.missing_tools()),
                                 reason="kernel build tools missing: build stops before the "
                                        "download")


@needs_tools
@pytest.mark.parametrize("case", ["wrong-checksum", "404", "no-network"])
def test_cli_failures(server: tuple[str, Behaviour], tmp_path: Path, case: str) -> None:
    url, _ = server
    sha = SHA256
    if case == "wrong-checksum":
        sha = "0" * 64
    elif case == "404":
        url = url.replace(NAME, "linux-7.3.9.tar.xz")
    else:
        url = refused_url()
    env = {**os.environ, "UMLROOT_CACHE": str(tmp_path / "cache")}
    result = run_umlroot(["kernel", "build", "--source", url, "--sha256", sha], env=env,
                         timeout=60)
    assert result.returncode == 1, result.stderr
    progress = ("umlroot: hint:", "umlroot: fetching", "umlroot: downloading")
    errors = [line for line in result.stderr.decode().splitlines()
              if line.startswith("umlroot: ") and not line.startswith(progress)]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr.decode()
    assert {"wrong-checksum": "SHA-256 mismatch", "404": "HTTP 404",
            "no-network": "Connection refused"}[case] in errors[0]
    assert leftovers(tmp_path / "cache") == []
    assert not list((tmp_path / "cache").glob("build/*"))


def test_debian_host_or_mirror_keeps_the_debian_path(cache: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel.org fallback only where Debian cannot work: --mirror, or a Debian host."""
    no_debian_host(monkeypatch, download.Pinned("7.3.4", "https://example.invalid/x.tar.xz", None))

    class Asked(Exception):
        pass

    def debian(*args: object) -> None:
        raise Asked

    monkeypatch.setattr(ksource, "find_debian_package", debian)
    with pytest.raises(Asked):
        build.plan_source(build.BuildOptions(mirror="http://mirror.invalid/debian"))
    monkeypatch.setattr(ksource, "can_use_debian_archive", lambda: True)
    with pytest.raises(Asked):
        build.plan_source(build.BuildOptions())
