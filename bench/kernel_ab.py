#!/usr/bin/env python3
"""Two UML kernels, `umlroot run -- true` on each, rounds alternating.

    bench/kernel_ab.py KERNEL_A KERNEL_B [--runs N] [--umlroot CMD]

For a kernel.config change: what it costs a run's start-up (boot, init,
shutdown) and the binary's size. Prints each kernel's size and median,
min and max wall time, and the median of the per-round ratios B/A
(a round runs A then B back to back, so both see the same host load).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from benchlib import add_umlroot_option, checked_timed  # bench/ is on sys.path


def timed_true(umlroot: list[str], kernel: Path) -> float:
    elapsed, _ = checked_timed([*umlroot, "run", "--kernel", str(kernel), "--", "true"],
                       what=f"{kernel}: umlroot run -- true")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernels", nargs=2, type=Path, metavar="KERNEL")
    parser.add_argument("--runs", type=int, default=20)
    add_umlroot_option(parser)
    options = parser.parse_args()
    umlroot = options.umlroot
    first, second = options.kernels
    for kernel in (first, second):  # warm the page cache and the init cache
        timed_true(umlroot, kernel)
    times: dict[Path, list[float]] = {first: [], second: []}
    for _ in range(options.runs):
        for kernel in (first, second):
            times[kernel].append(timed_true(umlroot, kernel))
    for label, kernel in (("A", first), ("B", second)):
        ts = times[kernel]
        size_mb = kernel.stat().st_size / 1e6
        print(f"{label} {kernel}: {size_mb:.2f} MB; run -- true median {statistics.median(ts) * 1000:.0f} ms"
              f" (min {min(ts) * 1000:.0f}, max {max(ts) * 1000:.0f}, {len(ts)} runs)")
    ratios = [b / a for a, b in zip(times[first], times[second])]
    print(f"B/A: median of per-round ratios {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
