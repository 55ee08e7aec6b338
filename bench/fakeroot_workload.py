#!/usr/bin/env python3
"""The fakeroot workload of issue 4, timed under fakeroot and under umlroot.

    bench/fakeroot_workload.py [--source DIR] [--runs N] [--umlroot CMD] [--phases]

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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

WORKLOAD = "chown -R 0:0 tree && mknod tree/null c 1 3 && tar -cf out.tar tree"


def tree_size(path: Path) -> tuple[int, int]:
    files = size = 0
    for root, dirs, names in os.walk(path):
        for name in names + dirs:
            st = os.lstat(os.path.join(root, name))
            files += 1
            size += st.st_size if not os.path.isdir(os.path.join(root, name)) else 0
    return files, size


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
    result = subprocess.run([*tool, "sh", "-c", script], cwd=work, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, errors="replace", check=False)
    if result.returncode != 0:
        sys.exit(f"{shlex.join(tool)} failed ({result.returncode}): {result.stderr}")
    return result.stderr


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


def guest_writeback_ms(stderr: str) -> int:
    """The init's own figure from the kernel log (--verbose)."""
    return int(re.findall(r"umlroot-init: writeback: (\d+) ms", stderr)[-1])


def steal_seconds() -> float:
    """CPU time stolen from this VM by the hypervisor, all CPUs, since boot."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def interleaved(names: list[str], runs: int, one: Callable[[str], float]) -> dict[str, list[float]]:
    """`runs` rounds of one(name) for each name in turn, so that every tool
    sees the same minutes of this shared machine."""
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(runs):
        for name in names:
            elapsed = one(name)
            times[name].append(elapsed)
            print(f"run {i + 1} {name:9} {elapsed:6.2f} s", flush=True)
    return times


def report_times(times: dict[str, list[float]]) -> None:
    """Medians, their ratio and the per-round ratios (umlroot/fakeroot)."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"load after: {os.getloadavg()[0]:.2f}")
    for name, median in medians.items():
        print(f"median {name:9} {median:6.2f} s")
    print(f"ratio umlroot/fakeroot: {medians['umlroot'] / medians['fakeroot']:.2f}")
    rounds = [u / f for u, f in zip(times["umlroot"], times["fakeroot"])]
    print(f"per-round ratios: {' '.join(f'{r:.2f}' for r in rounds)}, "
          f"median {statistics.median(rounds):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/usr/share/doc"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--umlroot", default="umlroot run --",
                        help="the umlroot command line before `sh -c ...`")
    parser.add_argument("--phases", action="store_true",
                        help="instead of timing against fakeroot, show where umlroot's time goes")
    args = parser.parse_args()

    files, size = tree_size(args.source)
    print(f"tree: {args.source}, {files} entries, {size / 1e6:.0f} MB")
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min), cpus: {os.cpu_count()}")
    if args.phases:
        with tempfile.TemporaryDirectory(prefix="umlroot-bench-") as tmp:
            show_phases(shlex.split(args.umlroot), args.source, Path(tmp))
        return
    stolen_before = steal_seconds()
    tools = {"fakeroot": ["fakeroot"], "umlroot": shlex.split(args.umlroot)}
    with tempfile.TemporaryDirectory(prefix="umlroot-bench-") as tmp:
        times = interleaved(list(tools), args.runs,
                            lambda name: one_run(tools[name], args.source, Path(tmp)))
    report_times(times)
    print(f"CPU time stolen by the hypervisor meanwhile: {steal_seconds() - stolen_before:.1f} s")


if __name__ == "__main__":
    main()
