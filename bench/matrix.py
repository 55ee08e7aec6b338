#!/usr/bin/env python3
"""The workload matrix of issue 9: real packaging and build work, timed
natively, under fakeroot and under umlroot, interleaved in one run.

    bench/matrix.py [--rounds N] [--variants LIST] [--only LIST] [--kernel PATH] [--markdown]

Workloads (inputs are made once, natively, before anything is timed):

    fakeroot      chown -R 0:0 + mknod + tar -cf of a copy of /usr/share/doc
    xz-c / xz-d   xz -T0 compressing 100 MB (-1) / decompressing its multi-block .xz
    zstd-c/zstd-d zstd -T0 compressing 100 MB / decompressing it
    dpkg-build    dpkg-deb --build of a copy of /usr/share/doc (root-owned, xz)
    dpkg-extract  dpkg-deb --fsys-tarfile | tar -x of 100 packages
    make-j2       make -j2 of a 41-file C project
    threads       a C thread pool: 4 threads, 5,000 batches of 16 small tasks
    spawn         a shell loop running /bin/true 1,000 times

Set `big` (issue 23; not run unless asked for, with `--set big`):

    big-cp        cp of a 1 GiB host file (random data) into the work directory
    big-stream    yes | head -c 1G into the work directory
    big-tar       tar -cf of a 1 GiB tree (64 files of 16 MiB) into the work directory
    deb-none      chown -R 0:0 + dpkg-deb -Znone --build of 500 MB of random data
    deb-xz        the same with dpkg-deb's default compression

Set `many` (issue 25; `--set many`):

    many-create   a shell loop (builtins only) making 200 directories of 250 small files
    many-tar      tar -cf of 50,000 small host files, piped to cat > /dev/null
    many-cpdoc    cp -a /usr/share/doc into the work directory

Rows that leave files in the work directory are timed natively with a final
`sync` (what the issues compare against: umlroot's writeback has put the files
on the host when it returns); outputs are removed before each run, untimed.

Variants: `native` (this user; as root when the workload needs root and the
benchmark runs as root, else skipped), `fakeroot` (where it applies), and
`uml1`, `uml2`, `uml4` (umlroot with that many guest CPUs; uml1 is the
default), `uml2-pinned` (2 guest CPUs, UML pinned to one host CPU with
taskset); `b:uml1` etc. run the umlroot of `--umlroot-b` instead (an A/B of
two builds in the same rounds). Each round runs every workload under every variant in turn, so all
see the same machine; the report gives medians and the ratios the issue
sets targets for: umlroot at most 3x native and 2x fakeroot, and no more
than 10% slower at the default CPU count than with one CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchlib import add_umlroot_option, steal_seconds  # bench/ is on sys.path
from fakeroot_workload import WORKLOAD, fresh_tree

HERE = Path(__file__).resolve().parent
DATA_SIZE = 100 * 1024 * 1024
DOC = Path("/usr/share/doc")
PACKAGES = 100
C_FILES = 40
BIG = 1 << 30
BIG_TREE_FILES = 64
DEB_DATA = 500 * 1000 * 1000
# 200 directories of 250 small files, shell builtins only (no process per file).
MANY_LOOP = ('i=0; while [ $i -lt 200 ]; do mkdir -p {top}/d$i; j=0; '
             'while [ $j -lt 250 ]; do echo "file $i $j" > {top}/d$i/f$j; j=$((j+1)); done; '
             'i=$((i+1)); done')


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    script: str  # run with sh -c in the work directory
    needs_root: bool = False
    fakeroot: bool = False  # fakeroot is an anchor for this one
    setup: Callable[[Path], None] | None = None  # before each timed run, not timed
    set: str = "default"  # `--set`: default, big (issue 23), many (issue 25)
    sync: bool = False  # native and fakeroot runs end with a timed `sync`


def removing(*names: str) -> Callable[[Path], None]:
    """A setup that removes the outputs of the previous run."""
    def setup(work: Path) -> None:
        for name in names:
            path = work / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    return setup


def no_deb(work: Path) -> None:
    (work / "out.deb").unlink(missing_ok=True)


WORKLOADS = [
    Workload("fakeroot", WORKLOAD, needs_root=True, fakeroot=True,
             setup=functools.partial(fresh_tree, DOC)),
    Workload("xz-c", "xz -T0 -1 -c data > /dev/null"),
    Workload("xz-d", "xz -T0 -dc data.xz > /dev/null"),
    Workload("zstd-c", "zstd -q -T0 -c data > /dev/null"),
    Workload("zstd-d", "zstd -q -T0 -dc data.zst > /dev/null"),
    Workload("dpkg-build", "chown -R 0:0 pkg && dpkg-deb --build pkg out.deb > /dev/null",
             needs_root=True, fakeroot=True, setup=no_deb),
    Workload("dpkg-extract", "mkdir x && for deb in debs/*.deb; do "
             "dpkg-deb --fsys-tarfile $deb | tar -xf - -C x || exit 1; done && rm -rf x"),
    Workload("make-j2", "make -s -j2 -C cproj && make -s -C cproj clean"),
    Workload("threads", "./threadpool 4 5000 16 5000 > /dev/null"),
    # Process creation alone: what dpkg's maintainer scripts, make and
    # debhelper do hundreds of times.
    Workload("spawn", 'i=0; while [ $i -lt 1000 ]; do /bin/true; i=$((i+1)); done'),
    # Big outputs (issue 23).
    Workload("big-cp", "cp host.bin out.bin", set="big", sync=True,
             setup=removing("out.bin")),
    Workload("big-stream", "yes | head -c 1G > out.bin", set="big", sync=True,
             setup=removing("out.bin")),
    Workload("big-tar", "tar -cf out.tar bigtree", set="big", sync=True,
             setup=removing("out.tar")),
    Workload("deb-none", "chown -R 0:0 bigdeb && dpkg-deb -Znone --build bigdeb out.deb "
             "> /dev/null", needs_root=True, fakeroot=True, set="big", sync=True,
             setup=removing("out.deb")),
    Workload("deb-xz", "chown -R 0:0 bigdeb && dpkg-deb --build bigdeb out.deb > /dev/null",
             needs_root=True, fakeroot=True, set="big", sync=True, setup=removing("out.deb")),
    # Many files (issue 25).
    Workload("many-create", MANY_LOOP.format(top="many"), set="many", sync=True,
             setup=removing("many")),
    Workload("many-tar", "tar -cf - hostmany | cat > /dev/null", set="many"),
    Workload("many-cpdoc", f"cp -a {DOC} doc", set="many", sync=True, setup=removing("doc")),
]
SETS = ("default", "big", "many")

VARIANTS = ("native", "fakeroot", "uml1", "uml2", "uml4", "uml2-pinned")


def run(argv: Sequence[str], **kwargs: object) -> None:
    subprocess.run(argv, check=True, **kwargs)  # type: ignore[call-overload]


def prepare(work: Path, sets: set[str]) -> None:
    """Inputs for the workloads of `sets`, made natively (not timed)."""
    print(f"preparing inputs in {work} ...", flush=True)
    if "big" in sets:
        prepare_big(work)
    if "many" in sets:
        run(["sh", "-c", MANY_LOOP.format(top="hostmany")], cwd=work)
    if "default" in sets:
        prepare_default(work)


def random_file(path: Path, size: int) -> None:
    with open("/dev/urandom", "rb") as source, open(path, "wb") as out:
        left = size
        while left > 0:
            left -= out.write(source.read(min(left, 1 << 20)))


def prepare_big(work: Path) -> None:
    random_file(work / "host.bin", BIG)
    (work / "bigtree").mkdir()
    for index in range(BIG_TREE_FILES):
        random_file(work / f"bigtree/f{index:02}", BIG // BIG_TREE_FILES)
    (work / "bigdeb/DEBIAN").mkdir(parents=True)
    (work / "bigdeb/DEBIAN/control").write_text(
        "Package: umlroot-bench-big\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: umlroot <umlroot@localhost>\nDescription: 500 MB of random data\n")
    (work / "bigdeb/usr/share/big").mkdir(parents=True)
    for index in range(5):
        random_file(work / f"bigdeb/usr/share/big/r{index}", DEB_DATA // 5)


def prepare_default(work: Path) -> None:
    with open(work / "data", "wb") as data:
        tar = subprocess.Popen(["tar", "-cf", "-", "/usr/lib", "/usr/share"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert tar.stdout is not None
        left = DATA_SIZE
        while left > 0:
            chunk = tar.stdout.read(min(left, 1 << 20))
            if not chunk:
                sys.exit("not enough data under /usr for 100 MB")
            data.write(chunk)
            left -= len(chunk)
        tar.kill()
        tar.wait()
    # Multi-block, as xz -T0 writes it, so that decompression can use threads.
    run(["xz", "-T2", "-6", "-k", "-f", str(work / "data")])
    run(["zstd", "-q", "-T0", "-f", str(work / "data"), "-o", str(work / "data.zst")])
    (work / "pkg/DEBIAN").mkdir(parents=True)
    (work / "pkg/DEBIAN/control").write_text(
        "Package: umlroot-bench-doc\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: umlroot <umlroot@localhost>\nDescription: a copy of /usr/share/doc\n")
    (work / "pkg/usr/share").mkdir(parents=True)
    run(["cp", "-a", str(DOC), str(work / "pkg/usr/share/doc")])
    make_packages(work)
    make_c_project(work / "cproj")
    run(["cc", "-O2", "-pthread", "-o", str(work / "threadpool"),
         str(HERE / "workloads/threadpool.c")])


def make_packages(work: Path) -> None:
    """100 real .deb files: /usr/share/doc's entries dealt out to them."""
    entries = sorted(DOC.iterdir())
    (work / "debs").mkdir()
    for index in range(PACKAGES):
        root = work / f"deb{index}"
        (root / "DEBIAN").mkdir(parents=True)
        (root / "DEBIAN/control").write_text(
            f"Package: umlroot-bench-{index}\nVersion: 1.0\nArchitecture: all\n"
            "Maintainer: umlroot <umlroot@localhost>\nDescription: benchmark input\n")
        (root / "usr/share/doc").mkdir(parents=True)
        for entry in entries[index::PACKAGES]:
            run(["cp", "-a", str(entry), str(root / "usr/share/doc")])
        run(["dpkg-deb", "--root-owner-group", "--build", str(root),
             str(work / f"debs/{index:03}.deb")], stdout=subprocess.DEVNULL)
        shutil.rmtree(root)


def make_c_project(folder: Path) -> None:
    folder.mkdir()
    for index in range(C_FILES):
        (folder / f"f{index}.c").write_text(f"""\
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
struct item {{ int key; double weight; char name[32]; }};
static int compare(const void *a, const void *b)
{{ return ((const struct item *)a)->key - ((const struct item *)b)->key; }}
int work{index}(int n)
{{
    struct item *items = calloc(n, sizeof(*items));
    int sum = 0;
    for (int i = 0; i < n; i++) {{
        items[i].key = (i * 7919 + {index}) % n;
        items[i].weight = i / 3.0;
        snprintf(items[i].name, sizeof(items[i].name), "item-%d", i);
    }}
    qsort(items, n, sizeof(*items), compare);
    for (int i = 0; i < n; i++)
        sum += items[i].key ^ (int)strlen(items[i].name);
    free(items);
    return sum;
}}
""")
    calls = "".join(f"    sum += work{i}(1000);\n" for i in range(C_FILES))
    decls = "".join(f"int work{i}(int);\n" for i in range(C_FILES))
    (folder / "main.c").write_text(f"#include <stdio.h>\n{decls}int main(void)\n{{\n"
                                   f"    int sum = 0;\n{calls}    printf(\"%d\\n\", sum);\n"
                                   "    return 0;\n}\n")
    (folder / "Makefile").write_text(
        "OBJS = $(patsubst %.c,%.o,$(wildcard *.c))\n"
        "prog: $(OBJS)\n\t$(CC) -o $@ $^\n"
        "%.o: %.c\n\t$(CC) -O2 -c -o $@ $<\n"
        "clean:\n\trm -f *.o prog\n")


def tool_argv(variant: str, workload: Workload, umlroot: list[str],
              kernel: Path | None = None) -> list[str] | None:
    """The command line a variant puts before `sh -c SCRIPT`, or None where it
    does not apply."""
    if variant == "native":
        return [] if not workload.needs_root or os.geteuid() == 0 else None
    if variant == "fakeroot":
        return ["fakeroot"] if workload.fakeroot else None
    pinned = variant.endswith("-pinned")
    cpus = variant.removesuffix("-pinned").removeprefix("uml")
    kernel_args = ["--kernel", str(kernel)] if kernel is not None else []
    argv = [*umlroot, "run", "--cpus", cpus, *kernel_args, "--"]
    return ["taskset", "-c", "0", *argv] if pinned else argv


def time_one(argv: list[str], workload: Workload, work: Path, sync: bool = False) -> float:
    """Wall time of one run; `sync`: with a final host `sync` (the native anchors)."""
    if workload.setup is not None:
        workload.setup(work)
    run(["sync"])
    start = time.monotonic()
    result = subprocess.run([*argv, "sh", "-c", workload.script], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, errors="replace", check=False)
    if sync:
        run(["sync"])
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"{workload.name}: {shlex.join(argv)} failed ({result.returncode}): "
                 f"{result.stderr.strip()[-500:]}")
    return elapsed


def report(times: dict[str, dict[str, list[float]]], variants: Sequence[str],
           markdown: bool) -> None:
    uml = [v for v in variants if v.removeprefix("b:").startswith("uml")]
    head = ["workload", *variants, *(f"{v}/native" for v in uml),
            *(f"{v}/fakeroot" for v in uml), *(f"{v}/uml1" for v in uml if v != "uml1")]
    rows = []
    for name, by_variant in times.items():
        med = {v: statistics.median(t) for v, t in by_variant.items() if t}
        cells = [name] + [f"{med[v]:.2f} s" if v in med else "-" for v in variants]
        for anchor in ("native", "fakeroot"):
            cells += [f"{med[v] / med[anchor]:.2f}x" if v in med and anchor in med else "-"
                      for v in uml]
        cells += [f"{med[v] / med['uml1']:.2f}x" if v in med and "uml1" in med else "-"
                  for v in uml if v != "uml1"]
        rows.append(cells)
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + " --- |" * len(head))
        for cells in rows:
            print("| " + " | ".join(cells) + " |")
        return
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="native,fakeroot,uml1,uml2",
                        help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--only", default="",
                        help="comma-separated workload names (default: all of the sets)")
    parser.add_argument("--set", default="default",
                        help=f"comma-separated workload sets, from: {', '.join(SETS)}, or all "
                             "(default: default; big and many need ~4 GB in the work "
                             "directory and minutes per round)")
    add_umlroot_option(parser)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where inputs go (default: a new directory in TMPDIR)")
    parser.add_argument("--umlroot-b", type=shlex.split, default=None,
                        help="a second umlroot for A/B in the same rounds: variants named "
                             "b:uml1 (etc.) run it")
    parser.add_argument("--kernel", type=Path, default=None,
                        help="UML kernel for the umlroot variants (A/B against another build)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()

    variants = [v for v in args.variants.split(",") if v]
    unknown = {v.removeprefix("b:") for v in variants} - set(VARIANTS)
    if any(v.startswith("b:") for v in variants) and not args.umlroot_b:
        parser.error("b: variants need --umlroot-b")
    if unknown:
        parser.error(f"unknown variant(s): {', '.join(sorted(unknown))}")
    sets = set(SETS) if args.set == "all" else {s for s in args.set.split(",") if s}
    if sets - set(SETS):
        parser.error(f"unknown set(s): {', '.join(sorted(sets - set(SETS)))}")
    chosen = [w for w in WORKLOADS if w.set in sets
              and (not args.only or w.name in args.only.split(","))]
    sets = {w.set for w in chosen}
    umlroot = args.umlroot
    with tempfile.TemporaryDirectory(prefix="umlroot-matrix-", dir=args.workdir) as tmp:
        work = Path(tmp)
        prepare(work, sets)
        print(f"load before: {os.getloadavg()[0]:.2f}, host cpus: {os.cpu_count()}, "
              f"rounds: {args.rounds}", flush=True)
        stolen = steal_seconds()
        times: dict[str, dict[str, list[float]]] = {
            w.name: {v: [] for v in variants} for w in chosen}
        for round_number in range(1, args.rounds + 1):
            for workload in chosen:
                for variant in variants:
                    argv = tool_argv(variant.removeprefix("b:"), workload,
                                     args.umlroot_b if variant.startswith("b:") else umlroot,
                                     args.kernel)
                    if argv is None:
                        continue
                    elapsed = time_one(argv, workload, work,
                                       sync=workload.sync and "uml" not in variant)
                    times[workload.name][variant].append(elapsed)
                    print(f"round {round_number} {workload.name:12} {variant:11} "
                          f"{elapsed:7.2f} s", flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}; CPU time stolen by the hypervisor "
          f"meanwhile: {steal_seconds() - stolen:.1f} s")
    report(times, variants, args.markdown)


if __name__ == "__main__":
    main()
