"""Shared fixtures. Tests marked `uml` boot a real UML kernel through the
`umlroot` command line, exactly as a user would; they are skipped (with the
reason) only where no kernel is found. CI always has one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from umlroot.errors import UmlrootError


def _umlroot_argv() -> list[str]:
    explicit = os.environ.get("UMLROOT_BIN")
    if explicit:
        return [explicit]
    found = shutil.which("umlroot")
    if found:
        return [found]
    return [sys.executable, "-m", "umlroot"]


UMLROOT = _umlroot_argv()


def _kernel_problem() -> str | None:
    try:
        from umlroot.kernel.select import find_kernel

        find_kernel(None)
    except UmlrootError as error:
        return error.message
    return None


_KERNEL_PROBLEM = _kernel_problem()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _KERNEL_PROBLEM is None:
        return
    skip = pytest.mark.skip(reason=f"no bootable UML kernel: {_KERNEL_PROBLEM}")
    for item in items:
        if "uml" in item.keywords:
            item.add_marker(skip)


def run_umlroot(args: Sequence[str | bytes | os.PathLike[str]], *, cwd: Path | None = None,
                input: bytes | None = None, timeout: float = 120,
                env: dict[str, str] | None = None,
                stdin: int | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the umlroot command line; stdout/stderr captured as bytes."""
    return subprocess.run(
        [*UMLROOT, *args], cwd=cwd, input=input, timeout=timeout,
        capture_output=True, env=env, check=False,
        stdin=stdin if input is None else None,
    )


def host_processes(matches: Callable[[Path], bool]) -> list[int]:
    """PIDs of the host processes whose /proc/PID directory `matches` (which
    may raise OSError for a process that is gone or not ours: no match)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if matches(entry):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture
def private_tmp(tmp_path: Path) -> dict[str, str]:
    """An environment whose TMPDIR is a fresh directory, so a test can see
    that umlroot left nothing behind in it."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    return {**os.environ, "TMPDIR": str(tmpdir)}


@pytest.fixture
def umlroot() -> type[_Runner]:
    return _Runner


class _Runner:
    run = staticmethod(run_umlroot)
    argv = UMLROOT
