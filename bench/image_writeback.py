#!/usr/bin/env python3
"""Writeback of a sparse ext4 image made in the current directory (issue 10).

    bench/image_writeback.py [--runs N] [--source DIR] [--umlroot CMD]

Each round, in a fresh directory, runs

    umlroot run --verbose -- sh -c 'truncate -s 2G root.img && mkfs.ext4 -q root.img &&
        mount -o loop root.img /run/m && cp -a DIR /run/m/ && umount /run/m && stat ...'

(DIR: /usr/share/doc, ~5,000 files, ~110 MB), and prints the guest's own
writeback time (from the kernel log), the run's wall time, and the image's
allocation inside the guest and on the host afterwards.
"""

from __future__ import annotations

import argparse
import re
import shlex
import statistics
import tempfile
from pathlib import Path

from benchlib import add_umlroot_option, checked_timed, guest_writeback_ms, steal_seconds

SCRIPT = ("truncate -s 2G root.img && mkfs.ext4 -q root.img && mkdir /run/m && "
          "mount -o loop root.img /run/m && cp -a {source} /run/m/ && umount /run/m && "
          "echo allocated-inside $(stat -c %b root.img)")


def one_round(umlroot: list[str], source: Path, work: Path) -> tuple[int, float, int, int]:
    wall, result = checked_timed([*umlroot, "--verbose", "--", "sh", "-c",
                          SCRIPT.format(source=shlex.quote(str(source)))], what="umlroot", cwd=work)
    inside = int(re.findall(r"allocated-inside (\d+)", result.stdout)[0]) * 512
    host = (work / "root.img").stat().st_blocks * 512
    return guest_writeback_ms(result.stderr), wall, inside, host


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--source", type=Path, default=Path("/usr/share/doc"))
    add_umlroot_option(parser)
    args = parser.parse_args()
    stolen_before = steal_seconds()
    writebacks, walls = [], []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="umlroot-bench-") as tmp:
            wb, wall, inside, host = one_round([*args.umlroot, "run"], args.source, Path(tmp))
        writebacks.append(wb)
        walls.append(wall)
        print(f"run {i + 1}: writeback {wb} ms, wall {wall:.2f} s, allocated inside "
              f"{inside / 1e6:.1f} MB, on the host {host / 1e6:.1f} MB ({host / inside:.2f}x)",
              flush=True)
    print(f"median writeback {statistics.median(writebacks):.0f} ms, "
          f"median wall {statistics.median(walls):.2f} s")
    print(f"CPU time stolen by the hypervisor meanwhile: {steal_seconds() - stolen_before:.1f} s")


if __name__ == "__main__":
    main()
