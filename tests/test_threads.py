"""Multi-threaded programs in the guest (issue 9): a regression guard.

A 2-CPU guest once ran programs whose threads wait on each other 20-60x
slower than a 1-CPU guest (UML CPU threads spinning on the per-process
turnstile, docs/kernel.md). These tests run a small thread pool that
synchronises thousands of times, timed inside the guest, and check its
result against the host's.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import run_umlroot

SOURCE = Path(__file__).resolve().parent.parent / "bench" / "workloads" / "threadpool.c"
# 4 threads, 1,500 batches of 16 tasks: ~0.1 s natively, ~0.4 s in a 1-CPU guest.
POOL_ARGS = ["4", "1500", "16", "5000"]


@pytest.fixture(scope="module")
def threadpool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The pool, built on the host, and its checksum run natively."""
    folder = tmp_path_factory.mktemp("threads")
    binary = folder / "threadpool"
    subprocess.run(["cc", "-O2", "-pthread", "-o", str(binary), str(SOURCE)], check=True)
    native = subprocess.run([str(binary), *POOL_ARGS], capture_output=True, check=True)
    return binary, native.stdout.decode().strip()


def guest_seconds(binary: Path, expected: str, cpu_args: list[str]) -> float:
    """Run the pool in a fresh guest; its own wall time, measured inside."""
    script = ('a=$(date +%s%N); "$0" "$@" || exit; b=$(date +%s%N); '
              'echo "elapsed_ns $((b - a))" >&2')
    # cwd in the binary's folder: a guest's /tmp is its own unless the cwd is under it.
    result = run_umlroot(["run", "--no-writeback", *cpu_args, "--", "sh", "-c", script,
                          f"./{binary.name}", *POOL_ARGS], cwd=binary.parent, timeout=180)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stdout.decode().strip() == expected  # same work, same result
    match = re.search(rb"elapsed_ns (\d+)", result.stderr)
    assert match, result.stderr
    return int(match.group(1)) / 1e9


@pytest.mark.uml
def test_default_cpus_no_slower_than_one_cpu(threadpool: tuple[Path, str]) -> None:
    """The issue's guard: the default guest may not be 2x slower than --cpus 1
    on threaded work. Best of two runs each, interleaved."""
    binary, expected = threadpool
    default, one = [], []
    for _ in range(2):
        default.append(guest_seconds(binary, expected, []))
        one.append(guest_seconds(binary, expected, ["--cpus", "1"]))
    assert min(default) <= 2 * min(one), f"default {default} s, --cpus 1 {one} s"


@pytest.mark.uml
def test_two_cpus_threads_make_progress(threadpool: tuple[Path, str]) -> None:
    """With --cpus 2 the pool's threads take turns in one stub: slower than one
    CPU (2.5-3.2x for this pool here on a quiet host, 4x while a test suite ran
    beside it), but never the 20-60x of a spinning turnstile. Best of two runs
    each: a busy host slows a 2-CPU guest far more than a 1-CPU guest
    (docs/kernel.md)."""
    binary, expected = threadpool
    two, one = [], []
    for _ in range(2):
        two.append(guest_seconds(binary, expected, ["--cpus", "2"]))
        one.append(guest_seconds(binary, expected, ["--cpus", "1"]))
    assert min(two) <= 6 * min(one), f"--cpus 2 {two} s, --cpus 1 {one} s"
