#!/usr/bin/env python3
"""Real Debian packages built under fakeroot and under `umlroot fakeroot`: are
the .deb files bit-identical?

    bench/deb_parity.py [--work DIR] [--mirror URI] [--suite SUITE] [PACKAGE...]

For each source PACKAGE (default: hello authbind hostname), downloaded from
the Debian archive this machine's APT sources name (deb822 or one-line, read
with umlroot's own parser; --mirror URI overrides it) through a private APT
state under --work (no root, nothing of the host's APT touched), unpacked,
then built twice in the same directory:

    dpkg-buildpackage -b -us -uc --rules-requires-root -rfakeroot
    dpkg-buildpackage -b -us -uc --rules-requires-root -r'umlroot fakeroot'

`--rules-requires-root` makes `debian/rules binary` (dh_fixperms, the chowns,
dh_builddeb) run under the gain-root command whatever the package declares
(`--as-declared` to keep the package's own Rules-Requires-Root). dpkg-buildpackage
sets SOURCE_DATE_EPOCH from debian/changelog, so both builds may differ only by
what the gain-root command did. Every .deb is compared with `cmp`; a result
table follows, with the build times.

Run it as an ordinary user (as root, every file is root's under both tools and
nothing is compared). Build dependencies must be installed on the host; the
script checks with dpkg-checkbuilddeps and, if some are missing, prints the
command to run as root (`apt-get build-dep ./DIR` for each) and stops.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from umlroot.kernel.source import PrivateApt, debian_archive_source, host_apt_sources  # noqa: E402

DEFAULT_PACKAGES = ("hello", "authbind", "hostname")


@dataclass
class Result:
    package: str
    version: str
    times: dict[str, float]
    debs: dict[str, tuple[str, ...]]
    identical: list[str]
    different: list[str]


def private_apt(work: Path, mirror: str | None, suite: str | None) -> PrivateApt:
    """deb-src of the host's Debian archive (its first suite: the one the
    build dependencies installed here come from)."""
    host = debian_archive_source(host_apt_sources())
    if mirror is None:
        if host is None:
            sys.exit("no Debian archive in this machine's APT sources; pass --mirror URI")
        mirror = host.uri
    if suite is None:
        if host is None:
            sys.exit("no Debian archive in this machine's APT sources; pass --suite SUITE")
        suite = host.suites[0]
    signed_by = host.signed_by if host is not None and host.uri == mirror else None
    origin = "--mirror" if host is None or host.uri != mirror else "this machine's APT sources"
    print(f"sources: deb-src {mirror} {suite} main (from {origin})")
    apt = PrivateApt(work / "apt", mirror, suite, signed_by, kinds=("deb-src",))
    apt.update()
    return apt


def fetch_source(apt: PrivateApt, package: str, downloads: Path) -> Path:
    """apt-get source --download-only, then dpkg-source -x; the unpacked tree."""
    into = downloads / package
    if into.is_dir() and any(into.glob("*/debian/changelog")):
        return next(into.glob("*/debian/changelog")).parent.parent
    into.mkdir(parents=True, exist_ok=True)
    apt.run("apt-get", ["-q", "source", "--download-only", package], cwd=into)
    dsc = sorted(into.glob("*.dsc"))[-1]
    tree = into / "tree"
    subprocess.run(["dpkg-source", "-q", "-x", dsc.name, tree.name], cwd=into, check=True,
                   stdout=subprocess.DEVNULL)
    return tree


def changelog_version(tree: Path) -> str:
    return subprocess.run(["dpkg-parsechangelog", "-S", "Version"], cwd=tree, text=True,
                          capture_output=True, check=True).stdout.strip()


def missing_build_deps(tree: Path) -> str | None:
    checked = subprocess.run(["dpkg-checkbuilddeps"], cwd=tree, capture_output=True, text=True,
                             check=False)
    return None if checked.returncode == 0 else (checked.stderr.strip() or "unmet")


def build(tree: Path, where: Path, gain_root: str, as_declared: bool, log: Path) -> float:
    """One dpkg-buildpackage -b in where/src (always the same path); the .debs stay in where."""
    if where.exists():
        shutil.rmtree(where)
    where.mkdir(parents=True)
    shutil.copytree(tree, where / "src", symlinks=True)
    argv = ["dpkg-buildpackage", "-b", "-us", "-uc", f"-r{gain_root}"]
    if not as_declared:
        argv.insert(4, "--rules-requires-root")
    start = time.monotonic()
    with log.open("wb") as out:
        done = subprocess.run(argv, cwd=where / "src", stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT, check=False)
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        sys.exit(f"{shlex.join(argv)} failed (exit {done.returncode}) in {where / 'src'}; "
                 f"log: {log}\n" + log.read_text(errors="replace")[-3000:])
    return elapsed


def first_difference(a: Path, b: Path) -> str:
    """What differs, in words: the listings, else the control, else 'bytes'."""
    def show(deb: Path, what: str) -> list[str]:
        return subprocess.run(["dpkg-deb", what, str(deb)], capture_output=True, text=True,
                              check=False).stdout.splitlines()
    for what in ("-c", "-I"):
        left, right = show(a, what), show(b, what)
        if left != right:
            pairs = [(x, y) for x, y in zip(left, right) if x != y] or [(str(len(left)),
                                                                        str(len(right)))]
            return f"dpkg-deb {what}: {pairs[0][0]!r} vs {pairs[0][1]!r}"
    return "same listing and control, other bytes differ"


def compare(package: str, tree: Path, work: Path, tools: dict[str, str],
            as_declared: bool) -> Result:
    times: dict[str, float] = {}
    debs: dict[str, tuple[str, ...]] = {}
    kept: dict[str, Path] = {}
    for name, gain_root in tools.items():
        where = work / "build" / package
        times[name] = build(tree, where, gain_root, as_declared,
                            work / "logs" / f"{package}.{name}.log")
        kept[name] = work / "debs" / name / package
        if kept[name].exists():
            shutil.rmtree(kept[name])
        kept[name].mkdir(parents=True)
        for deb in where.glob("*.deb"):
            shutil.move(str(deb), kept[name] / deb.name)
        debs[name] = tuple(sorted(p.name for p in kept[name].glob("*.deb")))
        print(f"  {package}: {name} build {times[name]:.1f} s, {len(debs[name])} .deb", flush=True)
    fake, uml = kept["fakeroot"], kept["umlroot"]
    identical: list[str] = []
    different: list[str] = []
    for deb_name in sorted(set(debs["fakeroot"]) | set(debs["umlroot"])):
        left, right = fake / deb_name, uml / deb_name
        if not left.exists() or not right.exists():
            different.append(f"{deb_name}: built by one tool only")
        elif subprocess.run(["cmp", "-s", str(left), str(right)], check=False).returncode == 0:
            identical.append(deb_name)
        else:
            different.append(f"{deb_name}: {first_difference(left, right)}")
    return Result(package, changelog_version(tree), times, debs, identical, different)


def table(results: list[Result]) -> str:
    rows = [("package", "version", ".deb files", "bit-identical", "fakeroot", "umlroot")]
    for r in results:
        count = len(set(r.debs["fakeroot"]) | set(r.debs["umlroot"]))
        rows.append((r.package, r.version, str(count),
                     "yes" if not r.different else f"no ({len(r.different)})",
                     f"{r.times['fakeroot']:.1f} s", f"{r.times['umlroot']:.1f} s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |"
             for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="*", default=list(DEFAULT_PACKAGES),
                        help=f"source packages [default: {' '.join(DEFAULT_PACKAGES)}]")
    parser.add_argument("--work", type=Path, default=Path("deb-parity"),
                        help="downloads, builds, logs and the .debs [default: %(default)s]")
    parser.add_argument("--mirror", help="a Debian mirror URI [default: this machine's]")
    parser.add_argument("--suite", help="[default: the first suite of this machine's sources]")
    parser.add_argument("--umlroot", default="umlroot fakeroot",
                        help="the gain-root command for umlroot [default: %(default)s]")
    parser.add_argument("--as-declared", action="store_true",
                        help="keep each package's Rules-Requires-Root instead of forcing "
                             "--rules-requires-root")
    args = parser.parse_args()
    if os.geteuid() == 0:
        print("warning: running as root: your files are root's under both tools, "
              "so this compares nothing of interest", file=sys.stderr)
    work = args.work.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    apt = private_apt(work, args.mirror, args.suite)
    trees = {}
    for package in args.packages:
        start = time.monotonic()
        trees[package] = fetch_source(apt, package, work / "downloads")
        print(f"{package}: {changelog_version(trees[package])} unpacked in "
              f"{time.monotonic() - start:.1f} s", flush=True)
    missing = {p: m for p, t in trees.items() if (m := missing_build_deps(t)) is not None}
    if missing:
        for package, what in missing.items():
            print(f"{package}: {what}", file=sys.stderr)
        dirs = " ".join(shlex.quote(f"{trees[p]}") for p in missing)
        sys.exit(f"missing build dependencies; as root: apt-get build-dep {dirs}")
    tools = {"fakeroot": "fakeroot", "umlroot": args.umlroot}
    results = [compare(p, t, work, tools, args.as_declared) for p, t in trees.items()]
    print()
    print(table(results))
    for r in results:
        for line in r.different:
            print(f"{r.package}: {line}")
    if any(r.different for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
