#!/usr/bin/env python3
"""The fakeroot workload of issue 4, timed under fakeroot and under umlroot.

    bench/fakeroot_workload.py [--source DIR] [--runs N] [--umlroot CMD] [--phases]

(--umlroot: how to run umlroot; see benchlib.py.)

Each round copies DIR (default /usr/share/doc: ~5,000 files, ~117 MB) to a
fresh `tree` in a scratch directory (not timed), then times

    TOOL sh -c 'chown -R 0:0 tree && mknod tree/null c 1 3 && tar -cf out.tar tree'

for TOOL = `fakeroot` and `umlroot run --` (boot, command, writeback of
out.tar and shutdown included), alternating the two so both see the same
machine load. Prints every time, the medians and their ratio, the median of
the per-round ratios, the load average before and after, and the CPU time
the hypervisor stole from this VM meanwhile (`steal` in /proc/stat): on a
shared VM, a busy neighbour slows UML's chain of waking processes more than
fakeroot, so read the ratio together with it.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    add_umlroot_option,
    checked,
    guest_writeback_ms,
    interleaved,
    report_times,
    steal_seconds,
    tree_size,
)

WORKLOAD = "chown -R 0:0 tree && mknod tree/null c 1 3 && tar -cf out.tar tree"


def fresh_tree(source: Path, work: Path) -> None:
    """A new copy of the source as `work/tree` (not timed), no out.tar."""
    for name in ("tree", "out.tar"):
        target = work / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    subprocess.run(["cp", "-a", str(source), str(work / "tree")], check=True)
    subprocess.run(["sync"], check=True)


def run_checked(tool: list[str], script: str, work: Path) -> str:
    """Run `TOOL sh -c SCRIPT` in work; exit on failure; return its stderr."""
    return checked([*tool, "sh", "-c", script], what=shlex.join(tool), cwd=work,
                   stdout=subprocess.DEVNULL).stderr


def one_run(tool: list[str], source: Path, work: Path) -> float:
    fresh_tree(source, work)
    start = time.monotonic()
    run_checked(tool, WORKLOAD, work)
    elapsed = time.monotonic() - start
    if not (work / "out.tar").exists():
        sys.exit(f"{shlex.join(tool)} left no out.tar")
    return elapsed


def show_phases(umlroot: list[str], source: Path, work: Path) -> None:
    """--phases: where umlroot's time goes, measured inside the guest. Three
    umlroot rounds: the workload with timestamps between its steps, `chown -R`
    alone (its writeback is the walk of the copied-up entries, with no file to
    copy), and the workload under strace -c (guest system calls)."""
    verbose = [*umlroot[:-1], "--verbose", umlroot[-1]] if umlroot[-1] == "--" else umlroot
    stamp = "$(date +%s%N)"
    fresh_tree(source, work)
    err = run_checked(verbose, f"a={stamp}; chown -R 0:0 tree; b={stamp}; "
                               f"mknod tree/null c 1 3 && tar -cf out.tar tree; c={stamp}; "
                               'echo "phases $a $b $c" >&2', work)
    a, b, c = (int(v) for v in re.findall(r"^phases (\d+) (\d+) (\d+)$", err, re.MULTILINE)[0])
    print(f"inside the guest: chown -R {(b - a) / 1e6:.0f} ms, mknod + tar {(c - b) / 1e6:.0f} ms, "
          f"writeback {guest_writeback_ms(err)} ms")
    print("umlroot " + next(line for line in err.splitlines() if "timing:" in line).split(": ", 1)[1])
    fresh_tree(source, work)
    err = run_checked(verbose, "chown -R 0:0 tree", work)
    print(f"writeback after chown -R alone (the walk): {guest_writeback_ms(err)} ms")
    if shutil.which("strace") is None:
        print("guest system calls: strace not installed")
        return
    fresh_tree(source, work)
    err = run_checked(umlroot, f"strace -f -c sh -c '{WORKLOAD}'", work)
    total = next(line for line in err.splitlines() if line.rstrip().endswith(" total"))
    print(f"guest system calls of the workload (strace -f -c inside): {total.split()[3]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/usr/share/doc"))
    parser.add_argument("--runs", type=int, default=5)
    add_umlroot_option(parser)
    parser.add_argument("--phases", action="store_true",
                        help="instead of timing against fakeroot, show where umlroot's time goes")
    args = parser.parse_args()

    files, size = tree_size(args.source)
    print(f"tree: {args.source}, {files} entries, {size / 1e6:.0f} MB")
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min), cpus: {os.cpu_count()}")
    if args.phases:
        with tempfile.TemporaryDirectory(prefix="umlroot-bench-") as tmp:
            show_phases([*args.umlroot, "run", "--"], args.source, Path(tmp))
        return
    stolen_before = steal_seconds()
    tools = {"fakeroot": ["fakeroot"], "umlroot": [*args.umlroot, "run", "--"]}
    with tempfile.TemporaryDirectory(prefix="umlroot-bench-") as tmp:
        times = interleaved(list(tools), args.runs,
                            lambda name: one_run(tools[name], args.source, Path(tmp)))
    report_times(times)
    print(f"CPU time stolen by the hypervisor meanwhile: {steal_seconds() - stolen_before:.1f} s")


if __name__ == "__main__":
    main()
