"""find_kernel's order and messages, with fake kernels (no boot)."""

from __future__ import annotations

from pathlib import Path

import pytest

from umlroot.errors import UmlrootError
from umlroot.kernel import build, probe, select, store
from umlroot.kernel.fragment import fragment_hash, fragment_text
from umlroot.kernel.probe import ProbeResult, ProbeStatus
from umlroot.kernel.select import Origin


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UMLROOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("UMLROOT_KERNEL", raising=False)
    monkeypatch.setattr(select, "SYSTEM_KERNELS", ())


def fake_kernel(path: Path, version: str = "7.3.4", smp: bool = True) -> Path:
    """A shell script that answers --version and --showconfig like a UML binary."""
    path.write_text(f"#!/bin/sh\ncase $1 in --version) echo {version};; "
                    f"--showconfig) echo CONFIG_SMP={'y' if smp else 'n'};; esac\n")
    path.chmod(0o755)
    return path


def cached_entry(tmp_path: Path) -> store.Entry:
    binary = fake_kernel(tmp_path / "built")
    return build.install(binary, store.Record(
        version="7.3.4", fragment_hash=fragment_hash(fragment_text()), source="debian x",
        source_id="debian:x", smp=True, build_seconds=1.0, built_at="2026-01-01"))


def test_nothing_found() -> None:
    with pytest.raises(UmlrootError) as info:
        select.find_kernel()
    assert info.value.message == "no UML kernel found"
    assert info.value.hint == "run `umlroot kernel build` (about 10 minutes, once)"
    assert info.value.exit_code == 125


def test_option_beats_env_beats_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = cached_entry(tmp_path)
    choice = select.find_kernel()
    assert (choice.origin, choice.path, choice.version, choice.smp) == \
        (Origin.CACHE, entry.binary, "7.3.4", True)
    env_kernel = fake_kernel(tmp_path / "env-linux", "7.2.0", smp=False)
    monkeypatch.setenv("UMLROOT_KERNEL", str(env_kernel))
    choice = select.find_kernel()
    assert (choice.origin, choice.version, choice.smp) == (Origin.ENV, "7.2.0", False)
    option_kernel = fake_kernel(tmp_path / "opt-linux", "7.1.0")
    choice = select.find_kernel(option_kernel)
    assert (choice.origin, choice.version, choice.smp) == (Origin.OPTION, "7.1.0", True)
    assert "--kernel" in choice.reason


def test_named_kernel_must_exist(tmp_path: Path) -> None:
    with pytest.raises(UmlrootError, match="--kernel .*: no such file"):
        select.find_kernel(tmp_path / "missing")
    (tmp_path / "plain").write_text("x")
    with pytest.raises(UmlrootError, match="not an executable file"):
        select.find_kernel(tmp_path / "plain")


def test_cache_path_does_not_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached_entry(tmp_path)

    def no_boot(*args: object, **kwargs: object) -> None:
        raise AssertionError("find_kernel booted on the cache path")

    monkeypatch.setattr(probe, "boot_probe", no_boot)
    assert select.find_kernel().origin is Origin.CACHE


def test_cache_choice_carries_recorded_lpj(tmp_path: Path) -> None:
    entry = cached_entry(tmp_path)
    probe.remember(entry.binary, probe.ProbeSettings(seccomp=True),
                   ProbeResult(ProbeStatus.OK, uptime=0.02, lpj=28000000))
    assert select.find_kernel().boot_args == ("lpj=28000000",)


def test_system_kernel_with_fp_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = fake_kernel(tmp_path / "linux.uml", "6.1.0")
    monkeypatch.setattr(select, "SYSTEM_KERNELS", (system,))
    probe.remember(system, probe.ProbeSettings(),
                   ProbeResult(ProbeStatus.FP_REGS, detail="ptrace set fp regs failed"))
    with pytest.raises(UmlrootError) as info:
        select.find_kernel()
    assert "AVX-512/AMX" in info.value.message and "6.13" in info.value.message
    assert info.value.hint is not None and "umlroot kernel build" in info.value.hint


def test_system_kernel_that_boots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = fake_kernel(tmp_path / "linux.uml", "7.2.0", smp=False)
    monkeypatch.setattr(select, "SYSTEM_KERNELS", (system,))
    probe.remember(system, probe.ProbeSettings(), ProbeResult(ProbeStatus.OK, uptime=0.9))
    choice = select.find_kernel()
    assert (choice.origin, choice.version, choice.smp) == (Origin.SYSTEM, "7.2.0", False)
    assert "boot probe" in choice.reason
