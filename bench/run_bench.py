#!/usr/bin/env python3
"""Benchmarks for `umlroot run` (issue 3's targets), from the outside.

    python3 bench/run_bench.py [--runs 10] [--umlroot PATH]

Prints: median/min/max wall time of `umlroot run -- true`, the --verbose
phase breakdown of one run, stdout throughput (`head -c 256M /dev/zero`
inside, `wc -c` outside) and stdin throughput (256 MiB from a host pipe
into `wc -c` inside). Throughput is bytes / total wall time, boot included.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def wall(argv: list[str], **kwargs: object) -> float:
    start = time.monotonic()
    subprocess.run(argv, check=True, **kwargs)  # type: ignore[call-overload]
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--umlroot", default=shutil.which("umlroot") or "umlroot")
    args = parser.parse_args()
    umlroot = [args.umlroot]
    work = tempfile.mkdtemp(prefix="umlroot-bench-")
    try:
        os.chdir(work)
        wall([*umlroot, "run", "--", "true"])  # warm the page cache
        times = [wall([*umlroot, "run", "--", "true"]) for _ in range(args.runs)]
        print(f"run -- true: median {statistics.median(times) * 1000:.0f} ms, "
              f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms ({args.runs} runs)")
        verbose = subprocess.run([*umlroot, "run", "--verbose", "--", "true"], check=True,
                                 capture_output=True, text=True)
        print(next(line for line in verbose.stderr.splitlines() if "timing:" in line))

        size = 256 << 20
        took = wall(["sh", "-c", f'"$0" run -- head -c {size} /dev/zero | wc -c >/dev/null',
                     *umlroot])
        print(f"stdout: {size >> 20} MiB in {took:.2f} s = {size / took / 1e6:.0f} MB/s")
        took = wall(["sh", "-c", f'head -c {size} /dev/zero | "$0" run -- wc -c >/dev/null',
                     *umlroot])
        print(f"stdin:  {size >> 20} MiB in {took:.2f} s = {size / took / 1e6:.0f} MB/s")
        print(f"load average: {os.getloadavg()[0]:.2f} (2 cores)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
