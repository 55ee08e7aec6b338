"""What the benchmarks here share (bench/ is on sys.path when one runs).

- `--umlroot`: in every benchmark, how to run umlroot (a command line, split
  as a shell would: `umlroot`, `.venv/bin/umlroot`, `python3 -m umlroot`);
  each benchmark adds the verb (`run --`, `fakeroot`) itself.
- `checked()`: run a command, or exit naming it, its status and the end of
  its stderr; `checked_timed()` the same, with the wall time.
- The machine's state around a measurement: the tree measured, CPU time
  stolen by the hypervisor, interleaved rounds and their report.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def add_umlroot_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--umlroot", default="umlroot", type=shlex.split,
                        help="how to run umlroot, split as a shell would (default: umlroot)")


def checked(argv: Sequence[str], *, what: str | None = None, tail: int = 3000,
            **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run argv (stdout and stderr captured as text unless given); exit on
    failure with one line naming it."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    result = subprocess.run(list(argv), text=True, errors="replace", check=False, **kwargs)
    if result.returncode != 0:
        stderr = (result.stderr or "").strip()[-tail:]
        sys.exit(f"{what or shlex.join(argv)} failed ({result.returncode}): {stderr}")
    return result


def checked_timed(argv: Sequence[str], **kwargs: Any) -> tuple[float, subprocess.CompletedProcess[str]]:
    """checked(), and its wall time in seconds."""
    start = time.monotonic()
    result = checked(argv, **kwargs)
    return time.monotonic() - start, result


def tree_size(path: Path) -> tuple[int, int]:
    files = size = 0
    for root, dirs, names in os.walk(path):
        for name in names + dirs:
            st = os.lstat(os.path.join(root, name))
            files += 1
            size += st.st_size if not os.path.isdir(os.path.join(root, name)) else 0
    return files, size


def steal_seconds() -> float:
    """CPU time stolen from this VM by the hypervisor, all CPUs, since boot."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def guest_writeback_ms(stderr: str) -> int:
    """The init's own figure from the kernel log (--verbose)."""
    return int(re.findall(r"umlroot-init: writeback: (\d+) ms", stderr)[-1])


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
