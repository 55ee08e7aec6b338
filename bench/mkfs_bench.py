#!/usr/bin/env python3
"""`umlroot mkfs` against the offline tools (issue 14).

    python3 bench/mkfs_bench.py [--runs N] [--source DIR] [--work DIR]

Images of SOURCE (default /usr/share/doc) with every file owned by 0:0:
- ext4: anchor `fakeroot mkfs.ext4 -q -d SOURCE img SIZE` (SIZE: the one
  umlroot computes) against `umlroot mkfs --all-root ext4 SOURCE img`;
- squashfs: anchor `mksquashfs SOURCE img -all-root` against `umlroot mkfs
  --all-root squashfs SOURCE img`;
- the same two types made entirely in the guest (`--state` of an empty
  state file: owners as the guest sees them, so nothing can run offline);
- btrfs and xfs (`--all-root`), which have no offline anchor.
The variants run interleaved (one of each per round, so load changes hit
all alike); the median of N rounds is printed, with the ratio to the
anchor. The last image of each variant is checked with its own tool.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchlib import checked  # bench/ is on sys.path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from umlroot.images.options import FsType
from umlroot.images.size import filesystem_size, measure_directory

SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
UMLROOT = os.environ.get("UMLROOT", f"{sys.executable} -m umlroot").split()


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=SBIN)
    if found is None:
        sys.exit(f"mkfs_bench: {name} not found")
    return found


def quiet(argv: list[str], cwd: Path) -> None:
    checked(argv, what=f"mkfs_bench: {argv}", cwd=cwd)


def variants(source: Path, work: Path, state: Path) -> dict[str, Callable[[], None]]:
    size = filesystem_size(FsType.EXT4, measure_directory(source))
    src = str(source)

    def umlroot(*args: str) -> Callable[[], None]:
        return lambda: quiet([*UMLROOT, "mkfs", *args], work)

    return {
        "ext4 anchor": lambda: quiet(["fakeroot", tool("mkfs.ext4"), "-q", "-F", "-d", src,
                                      "ext4-anchor.img", f"{size // 1024}k"], work),
        "ext4 umlroot": umlroot("--all-root", "ext4", src, "ext4.img"),
        "ext4 umlroot (guest)": umlroot("--state", str(state), "ext4", src, "ext4-guest.img"),
        "squashfs anchor": lambda: quiet([tool("mksquashfs"), src, "sq-anchor.img", "-all-root",
                                          "-noappend", "-quiet", "-no-progress"], work),
        "squashfs umlroot": umlroot("--all-root", "squashfs", src, "sq.img"),
        "squashfs umlroot (guest)": umlroot("--state", str(state), "squashfs", src,
                                            "sq-guest.img"),
        "btrfs umlroot": umlroot("--all-root", "btrfs", src, "btrfs.img"),
        "xfs umlroot": umlroot("--all-root", "xfs", src, "xfs.img"),
    }


CHECKS = {
    "ext4": [["e2fsck", "-fn"]], "squashfs": [["unsquashfs", "-s"]],
    "btrfs": [["btrfs", "check"]], "xfs": [["xfs_repair", "-n"]],
}
IMAGES = {"ext4-anchor.img": "ext4", "ext4.img": "ext4", "ext4-guest.img": "ext4",
          "sq-anchor.img": "squashfs", "sq.img": "squashfs", "sq-guest.img": "squashfs",
          "btrfs.img": "btrfs", "xfs.img": "xfs"}


def check_images(work: Path) -> None:
    for name, fstype in IMAGES.items():
        for argv in CHECKS[fstype]:
            quiet([tool(argv[0]), *argv[1:], str(work / name)], work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--source", type=Path, default=Path("/usr/share/doc"))
    parser.add_argument("--work", type=Path, default=None,
                        help="work directory (default: a new one under /var/tmp, removed)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="umlroot-mkfs-bench.", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        state = work / "empty.state"
        quiet([*UMLROOT, "run", "--no-writeback", "--state", str(state), "--", "true"], work)
        content = measure_directory(args.source)
        print(f"source: {args.source}, {content.data / 1e6:.0f} MB in {content.entries} entries;"
              f" {os.cpu_count()} host CPUs; load before: "
              f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
        jobs = variants(args.source, work, state)
        times: dict[str, list[float]] = {name: [] for name in jobs}
        for _ in range(args.runs):
            for name, job in jobs.items():
                start = time.monotonic()
                job()
                times[name].append(time.monotonic() - start)
        check_images(work)
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, median in medians.items():
            anchor = medians.get(name.split()[0] + " anchor")
            ratio = f"{median / anchor:.2f}x" if anchor and "anchor" not in name else ""
            spread = f"{min(times[name]):.2f}-{max(times[name]):.2f}"
            print(f"{name:26} {median:6.2f} s  {ratio:6}  (min-max {spread} s)")
        print(f"median of {args.runs} interleaved rounds; load after: "
              f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
