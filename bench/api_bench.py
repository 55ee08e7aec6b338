#!/usr/bin/env python3
"""The Python API's persistent guest against fresh `umlroot run`s (issue 13).

    python3 bench/api_bench.py [--rounds 5] [--commands 50] [--source DIR] [--umlroot CMD]

1. Per-command overhead: in one `umlroot.Guest`, `guest.run(["true"])`
   (--commands times per round; the round's median), against a fresh
   `umlroot run -- true` (a new process, boot and shutdown included).
2. The fakeroot workload of bench/fakeroot_workload.py split into its three
   steps (`chown -R 0:0 tree`, `mknod tree/null c 1 3`, `tar -cf out.tar
   tree`) run as three commands in one Guest (boot to close, writeback of
   out.tar included; in this process, so no interpreter start-up), against
   three `umlroot run --state S -- STEP` (the state file carries the owners
   and the device node from one run to the next, as fakeroot -s/-i would; a
   fresh one each round). Both must produce an out.tar whose entries are
   root's; each round gets a fresh copy of the tree (not timed).

Rounds interleave the two ways so both see the same minutes of this shared
machine; prints every time and the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import add_umlroot_option, steal_seconds, tree_size  # bench/ is on sys.path
from fakeroot_workload import WORKLOAD, fresh_tree

import umlroot

STEPS = WORKLOAD.split(" && ")


def fresh_run_true(cli: list[str], work: Path) -> float:
    start = time.monotonic()
    subprocess.run([*cli, "true"], cwd=work, check=True)
    return time.monotonic() - start


def guest_true(guest: umlroot.Guest, commands: int) -> float:
    times = []
    for _ in range(commands):
        start = time.monotonic()
        guest.run(["true"], check=True)
        times.append(time.monotonic() - start)
    return statistics.median(times)


def check_tar(work: Path) -> None:
    listing = subprocess.run(["tar", "--numeric-owner", "-tvf", "out.tar"], cwd=work,
                             capture_output=True, text=True, check=True).stdout.splitlines()
    owners = {line.split()[1] for line in listing}
    if owners != {"0/0"} or not any(line.startswith("c") for line in listing):
        sys.exit(f"out.tar is not root's or lacks the device node: {sorted(owners)[:5]}")


def three_runs(cli: list[str], source: Path, work: Path) -> float:
    fresh_tree(source, work)
    state = work.parent / "bench.state"
    state.unlink(missing_ok=True)
    start = time.monotonic()
    for step in STEPS:
        # stderr: the one-line summary ("kept only inside: 1 device node").
        done = subprocess.run([*cli[:-1], "--state", str(state), cli[-1], "sh", "-c", step],
                              cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{step}: {done.returncode}: {done.stderr}")
    elapsed = time.monotonic() - start
    state.unlink()
    check_tar(work)
    return elapsed


def one_guest(source: Path, work: Path) -> float:
    fresh_tree(source, work)
    start = time.monotonic()
    with umlroot.Guest(cwd=work) as guest:
        for step in STEPS:
            guest.run(["sh", "-c", step], stdout=umlroot.DEVNULL, check=True)
    elapsed = time.monotonic() - start
    check_tar(work)
    return elapsed


def show(name: str, values: list[float], unit: float = 1000, label: str = "ms") -> None:
    print(f"median {name}: {statistics.median(values) * unit:.1f} {label} "
          f"(rounds: {' '.join(f'{v * unit:.1f}' for v in values)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--commands", type=int, default=50)
    parser.add_argument("--source", type=Path, default=Path("/usr/share/doc"))
    add_umlroot_option(parser)
    args = parser.parse_args()
    cli = [*args.umlroot, "run", "--"]
    files, size = tree_size(args.source)
    print(f"tree: {args.source}, {files} entries, {size / 1e6:.0f} MB; "
          f"load before: {os.getloadavg()[0]:.2f}, cpus: {os.cpu_count()}")
    stolen = steal_seconds()
    fresh: list[float] = []
    persistent: list[float] = []
    runs3: list[float] = []
    guest1: list[float] = []
    with tempfile.TemporaryDirectory(prefix="umlroot-bench-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        with umlroot.Guest(cwd=work, writeback=False) as guest:
            guest_true(guest, 5)  # warm up
            fresh_run_true(cli, work)
            for i in range(args.rounds):
                fresh.append(fresh_run_true(cli, work))
                persistent.append(guest_true(guest, args.commands))
                print(f"round {i + 1}: umlroot run -- true {fresh[-1] * 1000:.0f} ms, "
                      f"guest.run(['true']) {persistent[-1] * 1000:.1f} ms", flush=True)
        for i in range(args.rounds):
            runs3.append(three_runs(cli, args.source, work))
            guest1.append(one_guest(args.source, work))
            print(f"round {i + 1}: three umlroot runs {runs3[-1]:.2f} s, "
                  f"one Guest {guest1[-1]:.2f} s", flush=True)
    show("umlroot run -- true", fresh)
    show(f"guest.run(['true']) (median of {args.commands} per round)", persistent)
    show("fakeroot workload, three `umlroot run --state`", runs3, 1, "s")
    show("fakeroot workload, three commands in one Guest", guest1, 1, "s")
    print(f"ratio three runs / one Guest: {statistics.median(runs3) / statistics.median(guest1):.2f}")
    print(f"load after: {os.getloadavg()[0]:.2f}; CPU time stolen by the hypervisor meanwhile: "
          f"{steal_seconds() - stolen:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
