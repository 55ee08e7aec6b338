#!/usr/bin/env python3
"""umlroot inside a container-like mount namespace vs outside, interleaved.

    sudo bench/container_bench.py --run-as 'runuser -u USER --' [--umlroot CMD]
                                  [--runs N] [--source DIR]

Run as root: each measurement starts a private mount namespace (`unshare -m`);
the container-like one also mounts Docker's default /dev/shm in it (a 64 MiB
tmpfs, noexec,nosuid,nodev), the other mounts nothing, so both pay the same
unshare + runuser start-up. Inside, the unprivileged user runs

    umlroot run -- true
    umlroot run -- sh -c 'chown -R 0:0 tree && mknod tree/null c 1 3 && tar -cf out.tar tree'

(the fakeroot workload of bench/fakeroot_workload.py, over a fresh copy of
DIR, default /usr/share/doc, copied before each round and not timed).
Rounds alternate inside/outside; prints every time, the medians and the
ratio inside/outside (the issue's bar: at most 1.1x).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from benchlib import add_umlroot_option, checked_timed  # bench/ is on sys.path

from fakeroot_workload import WORKLOAD, fresh_tree  # bench/ is on sys.path

SHM_MOUNT = "mount -t tmpfs -o size=64m,noexec,nosuid,nodev tmpfs /dev/shm"


def namespace_argv(container: bool, inner: list[str]) -> list[str]:
    setup = f"{SHM_MOUNT} && " if container else ""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            setup + 'exec "$@"', "sh", *inner]


def timed(container: bool, inner: list[str]) -> float:
    where = "inside" if container else "outside"
    elapsed, _ = checked_timed(namespace_argv(container, inner), what=f"{where}: {shlex.join(inner)}",
                       stdout=subprocess.DEVNULL)
    return elapsed


def fresh_owned_tree(source: Path, work: Path, owner: str) -> None:
    """fakeroot_workload's fresh tree, handed to the unprivileged user."""
    fresh_tree(source, work)
    subprocess.run(["chown", "-R", owner, str(work)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-as", required=True,
                        help="prefix that runs a command as the unprivileged user")
    parser.add_argument("--owner", default=None,
                        help="user:group owning the work directory [default: from --run-as]")
    add_umlroot_option(parser)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--source", type=Path, default=Path("/usr/share/doc"))
    args = parser.parse_args()
    run_as = shlex.split(args.run_as)
    umlroot = args.umlroot
    owner = args.owner or f"{run_as[run_as.index('-u') + 1]}:"
    work = Path(tempfile.mkdtemp(prefix="container-bench-", dir="/var/tmp"))
    work.chmod(0o755)
    times: dict[tuple[str, bool], list[float]] = {}
    try:
        for round_ in range(args.runs):
            for container in (round_ % 2 == 0, round_ % 2 == 1):
                shutil.chown(work, owner.split(":")[0])
                true_cmd = [*run_as, "sh", "-c", 'cd "$1" && shift && exec "$@"', "sh",
                            str(work), *umlroot, "run", "--", "true"]
                times.setdefault(("true", container), []).append(timed(container, true_cmd))
                fresh_owned_tree(args.source, work, owner)
                workload = [*run_as, "sh", "-c", 'cd "$1" && shift && exec "$@"', "sh",
                            str(work), *umlroot, "run", "--", "sh", "-c", WORKLOAD]
                times.setdefault(("workload", container), []).append(
                    timed(container, workload))
        for what in ("true", "workload"):
            inside = times[(what, True)]
            outside = times[(what, False)]
            print(f"{what}: inside  {' '.join(f'{t:.3f}' for t in inside)}")
            print(f"{what}: outside {' '.join(f'{t:.3f}' for t in outside)}")
            ratio = statistics.median(inside) / statistics.median(outside)
            # Each round runs both back to back: its ratio sees one machine load.
            per_round = statistics.median(i / o for i, o in zip(inside, outside))
            print(f"{what}: median inside {statistics.median(inside):.3f} s, outside "
                  f"{statistics.median(outside):.3f} s, ratio {ratio:.2f}x; median of "
                  f"per-round ratios {per_round:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
