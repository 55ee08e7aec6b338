#!/usr/bin/env python3
"""Benchmarks for `umlroot run` (issue 3's targets), from the outside.

    python3 bench/run_bench.py [--runs 10] [--umlroot PATH]

    python3 bench/run_bench.py --kernel PATH   (compare another kernel)

Prints: median/min/max wall time of `umlroot run -- true`; the --verbose
phase breakdown of one run; Python start-up (`umlroot --version`, the part
of every run spent before any phase starts); stdout throughput (`head -c
256M /dev/zero` inside, `wc -c` outside) and stdin throughput (256 MiB from
a host pipe into `wc -c` inside), bytes / total wall time, boot included;
and the guest system-call cost: 100,000 one-byte `dd` read/write pairs,
timed by dd itself inside the guest.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

from benchlib import add_umlroot_option, checked_timed  # bench/ is on sys.path


def wall(argv: list[str], **kwargs: object) -> float:
    return checked_timed(argv, stdout=None, stderr=None, **kwargs)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    add_umlroot_option(parser)
    parser.add_argument("--kernel", help="UML kernel to use (default: umlroot's choice)")
    args = parser.parse_args()
    umlroot = args.umlroot
    run = [*umlroot, "run", *(["--kernel", args.kernel] if args.kernel else [])]
    work = tempfile.mkdtemp(prefix="umlroot-bench-")
    try:
        os.chdir(work)
        wall([*run, "--", "true"])  # warm the page cache
        times = [wall([*run, "--", "true"]) for _ in range(args.runs)]
        print(f"run -- true: median {statistics.median(times) * 1000:.0f} ms, "
              f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms ({args.runs} runs)")
        verbose = subprocess.run([*run, "--verbose", "--", "true"], check=True,
                                 capture_output=True, text=True)
        print(next(line for line in verbose.stderr.splitlines() if "timing:" in line))
        startup = [wall([*umlroot, "--version"], stdout=subprocess.DEVNULL)
                   for _ in range(args.runs)]
        print(f"python start-up + imports (umlroot --version): median "
              f"{statistics.median(startup) * 1000:.0f} ms")

        size = 256 << 20
        took = wall(["sh", "-c", f'"$@" -- head -c {size} /dev/zero | wc -c >/dev/null',
                     "sh", *run])
        print(f"stdout: {size >> 20} MiB in {took:.2f} s = {size / took / 1e6:.0f} MB/s")
        took = wall(["sh", "-c", f'head -c {size} /dev/zero | "$@" -- wc -c >/dev/null',
                     "sh", *run])
        print(f"stdin:  {size >> 20} MiB in {took:.2f} s = {size / took / 1e6:.0f} MB/s")
        dd = subprocess.run([*run, "--no-writeback", "--", "dd", "if=/dev/zero", "of=/dev/null",
                             "bs=1", "count=100000"], check=True, capture_output=True, text=True)
        seconds = float(re.findall(r"copied, ([0-9.]+) s", dd.stderr)[-1])
        print(f"guest syscalls: 100,000 one-byte dd read/write pairs in {seconds:.2f} s "
              f"= {seconds / 200_000 * 1e6:.1f} us per syscall")
        print(f"load average: {os.getloadavg()[0]:.2f} (2 cores)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
