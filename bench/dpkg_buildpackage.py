#!/usr/bin/env python3
"""A real debhelper package built with dpkg-buildpackage, under fakeroot and
under `umlroot fakeroot`, interleaved.

    bench/dpkg_buildpackage.py [--runs N] [--umlroot CMD]

The package is the tests' (tests/data/demo-pkg: Rules-Requires-Root:
binary-targets, a setuid file, a directory owned by nobody, a symlink, a file
capability set in override_dh_fixperms). Each round copies it to a fresh
directory (not timed) and times

    dpkg-buildpackage -b -us -uc -rTOOL

for TOOL = `fakeroot` and `umlroot fakeroot` (two guests per build: `clean`
and `binary`), alternating the two so both see the same machine. Prints every
time, the medians, their ratio and the CPU time the hypervisor stole meanwhile.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import add_umlroot_option, interleaved, report_times, steal_seconds

DEMO_PKG = Path(__file__).resolve().parent.parent / "tests" / "data" / "demo-pkg"
DEB = "umlroot-demo_1.0_all.deb"


def one_build(gain_root: str, work: Path) -> float:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    shutil.copytree(DEMO_PKG, work / "src", symlinks=True)
    start = time.monotonic()
    result = subprocess.run(["dpkg-buildpackage", "-b", "-us", "-uc", f"-r{gain_root}"],
                            cwd=work / "src", capture_output=True, text=True,
                            errors="replace", check=False)
    elapsed = time.monotonic() - start
    if result.returncode != 0 or not (work / DEB).exists():
        sys.exit(f"dpkg-buildpackage -r{gain_root} failed ({result.returncode}):\n"
                 f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    add_umlroot_option(parser)
    args = parser.parse_args()
    tools = {"fakeroot": "fakeroot", "umlroot": shlex.join([*args.umlroot, "fakeroot"])}
    print(f"package: {DEMO_PKG}")
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min), cpus: {os.cpu_count()}")
    stolen_before = steal_seconds()
    with tempfile.TemporaryDirectory(prefix="umlroot-bench-") as tmp:
        times = interleaved(list(tools), args.runs,
                            lambda name: one_build(tools[name], Path(tmp) / name))
    report_times(times)
    print(f"CPU time stolen by the hypervisor meanwhile: {steal_seconds() - stolen_before:.1f} s")


if __name__ == "__main__":
    main()
