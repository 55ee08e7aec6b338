#!/usr/bin/env python3
"""Two UML kernels, one command on each, rounds alternating.

    bench/kernel_ab.py KERNEL_A KERNEL_B [--runs N] [--command SH]
                       [--options-a OPTS] [--options-b OPTS] [--umlroot CMD]

For a kernel.config change or a kernel patch: what it costs a run (boot,
init, the command, shutdown) and the binary's size. The command defaults to
`true` (start-up alone); `--command` takes a shell command (a path walk,
say), and `--options-a`/`--options-b` extra `umlroot run` options for one
side (e.g. `--real-owners` for a kernel without the owner mapping). Prints
each kernel's size and median, min and max wall time, and the median of the
per-round ratios B/A (a round runs A then B back to back, so both see the
same host load).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Side:
    label: str
    kernel: Path
    options: list[str]


def timed_run(umlroot: list[str], side: Side, command: str) -> float:
    argv = [*umlroot, "run", "--kernel", str(side.kernel), *side.options, "--",
            "sh", "-c", command]
    start = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"{shlex.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernels", nargs=2, type=Path, metavar="KERNEL")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--command", default="true", help="shell command (default: %(default)s)")
    parser.add_argument("--options-a", default="", help="extra `umlroot run` options for A")
    parser.add_argument("--options-b", default="", help="extra `umlroot run` options for B")
    parser.add_argument("--umlroot", default="umlroot", help="how to run umlroot (default: %(default)s)")
    options = parser.parse_args()
    umlroot = shlex.split(options.umlroot)
    sides = (Side("A", options.kernels[0], shlex.split(options.options_a)),
             Side("B", options.kernels[1], shlex.split(options.options_b)))
    for side in sides:  # warm the page cache and the init cache
        timed_run(umlroot, side, options.command)
    times: dict[str, list[float]] = {side.label: [] for side in sides}
    for _ in range(options.runs):
        for side in sides:
            times[side.label].append(timed_run(umlroot, side, options.command))
    print(f"command: {options.command}")
    for side in sides:
        ts = times[side.label]
        size_mb = side.kernel.stat().st_size / 1e6
        extra = f" {shlex.join(side.options)}" if side.options else ""
        print(f"{side.label} {side.kernel}{extra}: {size_mb:.2f} MB; median "
              f"{statistics.median(ts) * 1000:.0f} ms (min {min(ts) * 1000:.0f}, "
              f"max {max(ts) * 1000:.0f}, {len(ts)} runs)")
    ratios = [b / a for a, b in zip(times["A"], times["B"])]
    print(f"B/A: median of per-round ratios {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
