#!/usr/bin/env python3
"""`umlroot run --net`: download speed and a real mmdebstrap, interleaved.

    bench/net_bench.py [--umlroot CMD] [--rounds N] [--size-mib M]
                       [--suite SUITE] [--mirror URI] [--no-mmdebstrap]

Run as the unprivileged user umlroot is for. Two measurements:

1. Download: an HTTP server on the host's 127.0.0.1 serves M MiB (default
   100); each round, `curl` inside `umlroot run --net` fetches it from
   10.0.2.2 and reports the transfer time (curl's own, so boot is not in
   it); the host's own curl from 127.0.0.1 is the reference. The issue's
   bar: at least 200 MB/s in the guest.
2. mmdebstrap: `mmdebstrap --variant=minbase SUITE out.tar MIRROR` inside
   `umlroot run --net` (root mode, in the guest; MIRROR is --mirror, else
   the Debian archive this machine's APT sources name) against
   `mmdebstrap --mode=unshare` on the host (needs subuids and user
   namespaces), rounds alternating. Wall time of the whole command. The
   bar: at most 1.5x. The guest's tarball is then checked: every path,
   owner, group, mode and device number as in the host's tarball (but
   /etc/resolv.conf, which mmdebstrap copies from the system it runs on), and it
   unpacks and runs `chroot rootfs /bin/true` inside umlroot.

The work happens in a fresh directory under $HOME (not /tmp, so the guest's
/tmp is its own tmpfs, as for a user building in a project directory).
"""

from __future__ import annotations

import argparse
import http.server
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from benchlib import add_umlroot_option, checked  # bench/ is on sys.path
from umlroot.kernel.source import debian_archive_source, host_apt_sources

CURL_TIME = ["curl", "-s", "-o", "/dev/null", "-w", "%{time_total}\n"]


def check_output(argv: Sequence[str], cwd: Path) -> str:
    return checked(argv, cwd=cwd, tail=2000).stdout


def serve(directory: Path) -> http.server.ThreadingHTTPServer:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def download(umlroot: list[str], work: Path, rounds: int, size_mib: int) -> None:
    (work / "www").mkdir()
    with open(work / "www" / "blob", "wb") as out, open("/dev/urandom", "rb") as random:
        out.writelines(random.read(1 << 20) for _ in range(size_mib))
    server = serve(work / "www")
    port = server.server_address[1]
    size_mb = size_mib * (1 << 20) / 1e6
    guest_url, host_url = f"http://10.0.2.2:{port}/blob", f"http://127.0.0.1:{port}/blob"
    # All rounds in one guest: the figure is the transfer, not the boot.
    guest = check_output([*umlroot, "run", "--net", "--", "sh", "-c",
                          'n=$1; shift; i=0; while [ $i -lt $n ]; do "$@"; i=$((i+1)); done',
                          "sh", str(rounds), *CURL_TIME, guest_url], work)
    host = [check_output([*CURL_TIME, host_url], work) for _ in range(rounds)]
    server.shutdown()
    guest_s = [float(line) for line in guest.split()]
    host_s = [float(line) for line in host]
    print(f"download of {size_mib} MiB from the host's loopback, {rounds} rounds:")
    for label, times in (("guest (--net)", guest_s), ("host curl", host_s)):
        med = statistics.median(times)
        print(f"  {label:14} median {med:.3f} s = {size_mb / med:.0f} MB/s  "
              f"(all: {' '.join(f'{t:.3f}' for t in times)})")


def tar_listing(tarball: Path) -> list[str]:
    """Path, type+mode, owner/group and device numbers of every entry (the
    fields that must match; sizes and times of logs and caches may not)."""
    listing = subprocess.run(["tar", "--numeric-owner", "-tvf", str(tarball)],
                             capture_output=True, text=True, check=True).stdout
    rows = []
    for line in listing.splitlines():
        fields = line.split()
        device = fields[2] if fields[0].startswith(("c", "b")) else ""
        rows.append(f"{fields[5]} {fields[0]} {fields[1]} {device}")
    return sorted(rows)


def mmdebstrap(umlroot: list[str], work: Path, rounds: int, suite: str, mirror: str) -> None:
    args = ["--variant=minbase", suite, "out.tar", mirror]
    variants = {
        "umlroot run --net": [*umlroot, "run", "--net", "--", "mmdebstrap", *args],
        "mmdebstrap --mode=unshare": ["mmdebstrap", "--mode=unshare", *args],
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, argv in variants.items():
            (work / "out.tar").unlink(missing_ok=True)
            start = time.monotonic()
            check_output(argv, work)
            times[name].append(time.monotonic() - start)
            (work / "out.tar").rename(work / f"{name.split()[0]}.tar")
    print(f"mmdebstrap --variant=minbase {suite}, {rounds} rounds, interleaved:")
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        print(f"  {name:26} median {medians[name]:6.1f} s  (all: {' '.join(f'{t:.1f}' for t in ts)})")
    ratio = medians["umlroot run --net"] / medians["mmdebstrap --mode=unshare"]
    print(f"  ratio umlroot / unshare: {ratio:.2f}x")

    guest_tar, host_tar = work / "umlroot.tar", work / "mmdebstrap.tar"
    guest_rows, host_rows = tar_listing(guest_tar), tar_listing(host_tar)
    devices = [row for row in guest_rows if row.split()[1].startswith("c")]
    # mmdebstrap copies the running system's /etc/resolv.conf into the
    # image: the guest's (nameserver 10.0.2.3) in one, the host's in the other.
    differ = sorted(row for row in set(guest_rows) ^ set(host_rows)
                    if not row.startswith("./etc/resolv.conf "))
    print(f"  tarball: {len(guest_rows)} entries, {len(devices)} device nodes, "
          f"{len(differ)} path/mode/owner differences from the unshare tarball "
          "(/etc/resolv.conf aside)")
    for row in differ[:10]:
        print(f"    {row}")
    unpacked = check_output([*umlroot, "run", "--no-writeback", "--", "sh", "-c",
                             ("mkdir rootfs && tar -xpf umlroot.tar -C rootfs && "
                              "chroot rootfs /bin/true && echo chroot-ok")], work)
    print(f"  unpacked and `chroot rootfs /bin/true` inside umlroot: {unpacked.strip()}")


def host_mirror() -> str:
    """The Debian archive of this machine's APT sources (umlroot's own parser:
    deb822 or one-line); never a host name of ours."""
    found = debian_archive_source(host_apt_sources())
    if found is None:
        sys.exit("no Debian archive in this machine's APT sources: pass --mirror URI")
    return found.uri


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_umlroot_option(parser)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--suite", default="bookworm")
    parser.add_argument("--mirror", help="a Debian mirror URI [default: the one this machine's "
                                         "APT sources name]")
    parser.add_argument("--no-mmdebstrap", action="store_true")
    options = parser.parse_args()
    umlroot = options.umlroot
    mirror = options.mirror or host_mirror()
    with tempfile.TemporaryDirectory(prefix="umlroot-net-bench-", dir=Path.home()) as tmp:
        work = Path(tmp)
        download(umlroot, work, options.rounds, options.size_mib)
        if not options.no_mmdebstrap:
            mmdebstrap(umlroot, work, options.rounds, options.suite, mirror)
    return 0


if __name__ == "__main__":
    sys.exit(main())
