"""Cache keys, entries, atomic install and the build lock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from umlroot.cache import exclusive_lock
from umlroot.kernel import build, store
from umlroot.kernel.source import SourceKind


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("UMLROOT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def record(**changes: object) -> store.Record:
    fields: dict[str, object] = {
        "version": "7.3.4", "fragment_hash": "abc123", "source": "debian linux-source-7.3",
        "source_id": "debian:linux-source-7.3=7.3.4-1", "smp": True, "build_seconds": 300.0,
        "built_at": "2026-01-01T00:00:00+00:00", "compile_steps": 974}
    fields.update(changes)
    return store.Record(**fields)  # type: ignore[arg-type]


def test_entry_name_is_version_plus_fragment_hash() -> None:
    assert store.entry_name("7.3.4", "abc123") == "7.3.4-abc123"


def test_record_round_trip_ignores_unknown_fields() -> None:
    text = record().to_json()
    assert store.Record.from_json(text) == record()
    assert store.Record.from_json(text.replace('"smp"', '"future": 1, "smp"')) == record()


def install_fake(tmp_path: Path, rec: store.Record) -> store.Entry:
    binary = tmp_path / "linux-built"
    binary.write_bytes(b"\x7fELF fake " + rec.version.encode())
    binary.chmod(0o755)
    return build.install(binary, rec)


def test_install_is_atomic_and_replaces(cache: Path, tmp_path: Path) -> None:
    entry = install_fake(tmp_path, record())
    assert entry.directory == cache / "kernels" / "7.3.4-abc123"
    assert entry.binary.read_bytes().startswith(b"\x7fELF")
    again = install_fake(tmp_path, record(build_seconds=1.0))
    assert again.directory == entry.directory
    assert store.Record.from_json((entry.directory / "record.json").read_text()).build_seconds \
        == 1.0
    assert [p.name for p in (cache / "kernels").iterdir()] == ["7.3.4-abc123"]


def test_installed_skips_partial_entries(cache: Path, tmp_path: Path) -> None:
    install_fake(tmp_path, record())
    (cache / "kernels" / ".7.3.5-abc123.tmp").mkdir()  # a build being installed
    (cache / "kernels" / "7.3.9-abc123").mkdir()  # no binary, no record
    assert [e.record.version for e in store.installed()] == ["7.3.4"]


def test_best_prefers_current_fragment_then_newest(cache: Path, tmp_path: Path) -> None:
    install_fake(tmp_path, record())
    install_fake(tmp_path, record(version="7.10.1", fragment_hash="old"))
    install_fake(tmp_path, record(version="7.2.1"))
    chosen = store.best(store.installed(), "abc123")
    assert chosen is not None and chosen.record.version == "7.3.4"
    other = store.best(store.installed(), "nothing-matches")
    assert other is not None and other.record.version == "7.10.1"


def test_up_to_date_matches_source_and_fragment(cache: Path, tmp_path: Path) -> None:
    install_fake(tmp_path, record())
    plan = build.SourcePlan(SourceKind.DEBIAN, "d", "debian:linux-source-7.3=7.3.4-1", None)
    assert build.up_to_date(plan, "abc123") is not None
    assert build.up_to_date(plan, "changed") is None
    newer = build.SourcePlan(SourceKind.DEBIAN, "d", "debian:linux-source-7.3=7.3.5-1", None)
    assert build.up_to_date(newer, "abc123") is None


def test_second_locker_waits_and_says_so(cache: Path, tmp_path: Path) -> None:
    lock = store.lock_path()
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, pathlib\n"
        "from umlroot.cache import exclusive_lock\n"
        f"with exclusive_lock(pathlib.Path({str(lock)!r}), what='x'):\n"
        f"    pathlib.Path({str(ready)!r}).touch()\n"
        "    time.sleep(1.0)\n")], env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    try:
        while not ready.exists():
            time.sleep(0.02)
        messages: list[str] = []
        start = time.monotonic()
        with exclusive_lock(lock, what="another kernel build", say=messages.append):
            waited = time.monotonic() - start
        assert waited > 0.3
        assert len(messages) == 1 and "waiting for another kernel build" in messages[0]
    finally:
        holder.wait(timeout=10)


def test_progress_estimate_never_claims_done() -> None:
    seen: list[str] = []
    progress = build.Progress(10, out=seen.append)
    for _ in range(25):
        progress.feed("  CC      fs/ext4/inode.o")
    progress.feed("  LINK linux")
    assert seen[-1] == "linking"
    assert "90%" in seen[-2] and "100%" not in " ".join(seen)
    assert seen[0].startswith("compiling: 10%")


def test_missing_tools() -> None:
    assert build.missing_tools(["sh", "no-such-tool-umlroot"]) == ["no-such-tool-umlroot"]


def test_interrupted_build_step_stops_its_whole_process_group(tmp_path: Path) -> None:
    """Ctrl-C or SIGTERM during `make -jN`: every job stops, none is left compiling."""
    pid_file = tmp_path / "grandchild.pid"

    class InterruptingProgress(build.Progress):
        def feed(self, line: str) -> None:
            raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        build.run_logged(["sh", "-c", f"sleep 60 & echo $! > {pid_file}; echo go; wait"],
                         cwd=tmp_path, log_file=tmp_path / "log", step="compiling",
                         progress=InterruptingProgress(1))
    assert time.monotonic() - started < 10
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{grandchild}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{grandchild}").exists()
