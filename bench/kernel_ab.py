#!/usr/bin/env python3
"""Two UML kernels, one command on each, rounds alternating.

    bench/kernel_ab.py KERNEL_A KERNEL_B [--runs N] [--command SH]
                       [--options-a OPTS] [--options-b OPTS] [--umlroot CMD]
                       [--umlroot-b CMD]

For a kernel.config change or a kernel patch: what it costs a run (boot,
init, the command, shutdown) and the binary's size. The command defaults to
`true` (start-up alone); `--command` takes a shell command (a path walk,
say), and `--options-a`/`--options-b` extra `umlroot run` options for one
side (e.g. `--real-owners` for a kernel without the owner mapping), and
`--umlroot-b` another umlroot for B (two trees, each with its own kernel:
a whole change against the tree before it). Prints
each kernel's size and median, min and max wall time, and the median of the
per-round ratios B/A (a round runs A then B back to back, so both see the
same host load).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from benchlib import add_umlroot_option, checked_timed  # bench/ is on sys.path


@dataclass(frozen=True)
class Side:
    label: str
    kernel: Path
    options: list[str]
    umlroot: list[str]


def timed_run(side: Side, command: str) -> float:
    argv = [*side.umlroot, "run", "--kernel", str(side.kernel), *side.options, "--",
            "sh", "-c", command]
    elapsed, _ = checked_timed(argv)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernels", nargs=2, type=Path, metavar="KERNEL")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--command", default="true", help="shell command (default: %(default)s)")
    parser.add_argument("--options-a", default="", type=shlex.split,
                        help="extra `umlroot run` options for A")
    parser.add_argument("--options-b", default="", type=shlex.split,
                        help="extra `umlroot run` options for B")
    add_umlroot_option(parser)
    parser.add_argument("--umlroot-b", type=shlex.split, default=None,
                        help="how to run umlroot for B (default: as for A)")
    options = parser.parse_args()
    sides = (Side("A", options.kernels[0], options.options_a, options.umlroot),
             Side("B", options.kernels[1], options.options_b,
                  options.umlroot_b or options.umlroot))
    for side in sides:  # warm the page cache and the init cache
        timed_run(side, options.command)
    times: dict[str, list[float]] = {side.label: [] for side in sides}
    for _ in range(options.runs):
        for side in sides:
            times[side.label].append(timed_run(side, options.command))
    print(f"command: {options.command}")
    for side in sides:
        ts = times[side.label]
        size_mb = side.kernel.stat().st_size / 1e6
        extra = " ".join(["", *(["via", shlex.join(side.umlroot)] if options.umlroot_b else []),
                          *side.options])
        print(f"{side.label} {side.kernel}{extra}: {size_mb:.2f} MB; median "
              f"{statistics.median(ts) * 1000:.0f} ms (min {min(ts) * 1000:.0f}, "
              f"max {max(ts) * 1000:.0f}, {len(ts)} runs)")
    ratios = [b / a for a, b in zip(times["A"], times["B"])]
    print(f"B/A: median of per-round ratios {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
