"""`--net`: the guest's network through a user-mode slirp (umlroot/guest/net.py).

Everything here talks to servers on the host's loopback only: CI has no
network to rely on. The helper (vde_plug) is real in every test.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import UMLROOT, host_processes, run_umlroot

from umlroot.guest import net
from umlroot.errors import UmlrootError
from umlroot.guest.machine import ChannelFds, MachineSpec, kernel_command_line
from umlroot.guest.request import MachineRequest

# slirp's DNS proxy (guest-init/init.h has the same).
DNS_ADDRESS = "10.0.2.3"

# -- pure logic ---------------------------------------------------------------------


def test_kernel_command_line_has_eth0_only_with_net() -> None:
    spec = MachineSpec(kernel=Path("/k"), init=Path("/i"), run_dir=Path("/r"), disks=[])
    without = kernel_command_line(spec, ChannelFds(3, 4))
    assert not any(arg.startswith("vec") for arg in without)
    with_net = kernel_command_line(MachineSpec(kernel=Path("/k"), init=Path("/i"),
                                               run_dir=Path("/r"), disks=[], net_fd=7),
                                   ChannelFds(3, 4))
    assert f"vec0:transport=fd,fd=7,mtu={net.MTU}" in with_net


def test_request_says_net_only_when_asked() -> None:
    assert b"net\0" not in MachineRequest().encode()
    assert b"\0net\x001\0" in MachineRequest(net=True).encode()


def test_arp_probe_is_a_request_for_the_host_from_nowhere() -> None:
    frame = net.arp_probe()
    assert len(frame) == 42
    assert frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x01"
    assert frame[28:32] == bytes(4)  # sender 0.0.0.0: slirp learns nothing
    assert not net.is_arp_reply_from_host(frame)


# -- the helper on its own (no kernel) ------------------------------------------------


def test_helper_answers_and_is_gone_after(tmp_path: Path) -> None:
    with net.network(tmp_path) as helper:
        pid = helper.process.pid
        assert Path(f"/proc/{pid}").exists()
    assert helper.process.returncode is not None
    assert not Path(f"/proc/{pid}").exists()


def test_missing_helper_is_a_one_line_error_naming_the_package(tmp_path: Path) -> None:
    # A PATH without vde_plug; umlroot itself is started by absolute path.
    env = {**os.environ, "PATH": str(tmp_path)}
    result = run_umlroot(["run", "--net", "--", "true"], cwd=tmp_path, env=env)
    assert result.returncode == 125
    lines = result.stderr.decode().splitlines()
    assert lines[0] == "umlroot: --net needs vde_plug, which is not installed"
    assert "vdeplug" in lines[1] and "libvdeplug-slirp" in lines[1]
    assert b"Traceback" not in result.stderr


def test_helper_that_cannot_serve_is_a_one_line_error(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # vde_plug without a usable slirp module exits at once: what a host with
    # vdeplug but not libvdeplug-slirp does.
    monkeypatch.setattr(net, "SLIRP_URL", "nosuchmodule://")
    with pytest.raises(UmlrootError) as raised, net.network(tmp_path):
        pass
    assert raised.value.message.startswith("--net: vde_plug exited (status 1)")
    assert "Protocol not supported" in raised.value.message


# -- real guests -------------------------------------------------------------------------

uml = pytest.mark.uml


def helper_processes(tmpdir: str) -> list[int]:
    """vde_plug processes working in a run directory under tmpdir."""
    return host_processes(lambda proc: (proc / "comm").read_text().strip() == "vde_plug"
                          and os.readlink(proc / "cwd").startswith(tmpdir + "/"))


def assert_helper_gone(env: dict[str, str]) -> None:
    deadline = time.monotonic() + 5
    while helper_processes(env["TMPDIR"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert helper_processes(env["TMPDIR"]) == []
    assert os.listdir(env["TMPDIR"]) == []


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """An HTTP server on the host's 127.0.0.1 with a 100 MiB file `blob`:
    (port, sha256 of blob)."""
    root = tmp_path_factory.mktemp("www")
    digest = hashlib.sha256()
    generator = random.Random(12)
    with open(root / "blob", "wb") as out:
        for _ in range(100):
            chunk = generator.randbytes(1 << 20)
            digest.update(chunk)
            out.write(chunk)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], digest.hexdigest()
    server.shutdown()
    server.server_close()


DOWNLOAD = """
import hashlib, sys, urllib.request
digest = hashlib.sha256()
with urllib.request.urlopen(sys.argv[1]) as response:
    while chunk := response.read(1 << 20):
        digest.update(chunk)
print(digest.hexdigest())
"""


@uml
@pytest.mark.container
def test_download_from_a_host_loopback_server_is_intact(
        tmp_path: Path, private_tmp: dict[str, str], served: tuple[int, str]) -> None:
    port, sha256 = served
    result = run_umlroot(["run", "--net", "--", "python3", "-c", DOWNLOAD,
                          f"http://{net.HOST_ADDRESS}:{port}/blob"],
                         cwd=tmp_path, env=private_tmp)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == sha256
    assert_helper_gone(private_tmp)


DNS_QUERY = """
import os, socket, struct
# A query for an A record of `localhost.`: any answer (even NXDOMAIN) shows
# the guest reached a resolver, and only slirp's proxy is there.
ident = int.from_bytes(os.urandom(2), "big")
query = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + b"\\x09localhost\\x00\\x00\\x01\\x00\\x01"
nameserver = [line.split()[1] for line in open("/etc/resolv.conf") if line.startswith("nameserver")]
print(" ".join(nameserver))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(10)
sock.sendto(query, (nameserver[0], 53))
answer, sender = sock.recvfrom(4096)
print(sender[0], int.from_bytes(answer[:2], "big") == ident, bool(answer[2] & 0x80))
"""


@uml
def test_dns_goes_to_the_helpers_resolver_and_the_hosts_file_is_untouched(
        tmp_path: Path, private_tmp: dict[str, str]) -> None:
    before = Path("/etc/resolv.conf").read_bytes()
    result = run_umlroot(["run", "--net", "--", "python3", "-c", DNS_QUERY],
                         cwd=tmp_path, env=private_tmp)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [DNS_ADDRESS, f"{DNS_ADDRESS} True True"]
    assert Path("/etc/resolv.conf").read_bytes() == before


@uml
def test_fakeroot_net_writes_nothing_back_for_resolv_conf(tmp_path: Path) -> None:
    """Scope `/` would carry a changed /etc/resolv.conf back (as "denied"):
    the guest's file is a mount, not an overlay change, so nothing is."""
    result = run_umlroot(["fakeroot", "--net", "--", "cat", "/etc/resolv.conf"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"nameserver {DNS_ADDRESS}".encode() in result.stdout
    assert b"denied" not in result.stderr and b"resolv.conf" not in result.stderr


@uml
def test_without_net_there_is_no_eth0_and_loopback_works(tmp_path: Path) -> None:
    script = """
import socket
print(sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]))
server = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(server.getsockname())
conn, _ = server.accept()
client.sendall(b"ping")
print(conn.recv(4).decode())
"""
    result = run_umlroot(["run", "--", "python3", "-c", script], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    interfaces, pong = result.stdout.decode().splitlines()
    assert "lo" in interfaces and "eth0" not in interfaces
    assert pong == "ping"


@uml
def test_with_net_the_guest_has_eth0_with_slirps_addresses(tmp_path: Path) -> None:
    script = "cat /proc/net/route; cat /sys/class/net/eth0/mtu; cat /sys/class/net/eth0/operstate"
    result = run_umlroot(["run", "--net", "--", "sh", "-c", script], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    # /proc/net/route: the default route (destination 0) via 10.0.2.2 (little-endian hex).
    default = [line.split() for line in lines if line.startswith("eth0\t00000000")]
    assert default and default[0][2] == "0202000A"
    assert lines[-2:] == [str(net.MTU), "unknown"] or lines[-2:] == [str(net.MTU), "up"]


# -- the helper goes with the run, however the run ends ----------------------------------


def start_net_run(script: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*UMLROOT, "run", "--net", "--", "sh", "-c", script], cwd=cwd,
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    assert len(helper_processes(env["TMPDIR"])) == 1
    return proc


@uml
@pytest.mark.parametrize("ending", ["exit", "timeout", "panic"])
def test_no_helper_left_when_the_run_ends(tmp_path: Path, private_tmp: dict[str, str],
                                          ending: str) -> None:
    args = {
        "exit": ["run", "--net", "--", "true"],
        "timeout": ["run", "--net", "--timeout", "2", "--", "sleep", "60"],
        "panic": ["run", "--net", "--", "sh", "-c", "echo c > /proc/sysrq-trigger; sleep 10"],
    }[ending]
    result = run_umlroot(args, cwd=tmp_path, env=private_tmp)
    assert result.returncode == {"exit": 0, "timeout": 124, "panic": 125}[ending], result.stderr
    assert_helper_gone(private_tmp)


@uml
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
def test_no_helper_left_when_umlroot_is_interrupted_or_killed(
        tmp_path: Path, private_tmp: dict[str, str], signum: int) -> None:
    proc = start_net_run("echo started; exec sleep 60", tmp_path, private_tmp)
    (helper,) = helper_processes(private_tmp["TMPDIR"])
    proc.send_signal(signum)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{helper}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{helper}").exists()
    if signum == signal.SIGINT:
        assert proc.returncode == 130
        assert_helper_gone(private_tmp)
