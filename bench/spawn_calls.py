#!/usr/bin/env python3
"""Host system calls per guest spawn of /bin/true (issue 19's profile).

    bench/spawn_calls.py [--spawns N] [--umlroot CMD]

Runs `umlroot run` under `strace -f -c` twice, with a shell loop of 0 and of
N spawns of /bin/true, and prints the difference per spawn for each host
system call of the whole process tree (umlroot, UML, its stubs): what one
guest fork + exec + exit costs the host, independent of the machine's load
(counts, not times). Needs strace, and ptrace permission over one's own
processes (the default outside hardened containers).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import add_umlroot_option, checked  # bench/ is on sys.path


def host_calls(umlroot: list[str], spawns: int, out: Path) -> dict[str, int]:
    loop = f"i=0; while [ $i -lt {spawns} ]; do /bin/true; i=$((i+1)); done"
    checked(["strace", "-f", "-c", "-o", str(out), "--", *umlroot, "run", "--", "sh", "-c",
             loop], what=f"strace of a loop of {spawns} spawns")
    calls: dict[str, int] = {}
    for line in out.read_text().splitlines():
        fields = line.split()
        # "% time  seconds  usecs/call  calls  [errors]  syscall"; the total
        # line ends in "total".
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            calls[fields[-1]] = int(fields[3])
    return calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spawns", type=int, default=300)
    add_umlroot_option(parser)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = host_calls(options.umlroot, 0, Path(tmp) / "base")
        loop = host_calls(options.umlroot, options.spawns, Path(tmp) / "loop")
    per_spawn = {name: (loop.get(name, 0) - base.get(name, 0)) / options.spawns
                 for name in base.keys() | loop.keys()}
    print(f"host system calls per guest spawn of /bin/true ({options.spawns} spawns)")
    for name, count in sorted(per_spawn.items(), key=lambda item: -item[1]):
        if count >= 0.5:
            print(f"  {name:16s} {count:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
