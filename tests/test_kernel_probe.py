"""The probe's verdicts on recorded console outputs (no boot)."""

from __future__ import annotations

from pathlib import Path

import pytest

from umlroot.kernel import probe
from umlroot.kernel.probe import ProbeResult, ProbeSettings, ProbeStatus

DATA = Path(__file__).parent / "data"


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def test_working_kernel() -> None:
    result = probe.classify(recorded("probe-ok-7.3.txt"))
    assert result.status is ProbeStatus.OK
    assert result.uptime == pytest.approx(0.12)
    assert result.lpj == 17674240
    assert "init after 0.12 s" in result.explain()


def test_distro_kernel_fp_regs() -> None:
    result = probe.classify(recorded("probe-fp-regs-6.1.txt"))
    assert result.status is ProbeStatus.FP_REGS
    assert "AVX-512/AMX" in result.explain() and "6.13" in result.explain()
    assert "ptrace set fp regs failed" in result.detail


def test_noexec_tmpdir() -> None:
    result = probe.classify(recorded("probe-noexec-tmpdir.txt"))
    assert result.status is ProbeStatus.NO_TMPEXEC
    assert "Operation not permitted" in result.detail


def test_seccomp_not_functional() -> None:
    output = ("Checking that seccomp filters can be installed...missing\n"
              "SECCOMP userspace requested but not functional!\n")
    result = probe.classify(output)
    assert result.status is ProbeStatus.NO_SECCOMP
    assert "missing" in result.detail


def test_timeout_and_unknown_failure() -> None:
    assert probe.classify("[    0.01] Linux version 7.3\n", timed_out=True).status is \
        ProbeStatus.TIMEOUT
    other = probe.classify("[    0.50] Kernel panic - not syncing: VFS: Unable to mount root\n")
    assert other.status is ProbeStatus.FAILED
    assert "Unable to mount root" in other.detail
    assert probe.classify("").explain() == "does not boot: no output"


def test_init_that_fails_is_not_ok() -> None:
    output = ("[    0.10] Run /bin/true as init process\n"
              "[    0.10] Kernel panic - not syncing: Attempted to kill init! "
              "exitcode=0x0000000b\n")
    assert probe.classify(output).status is ProbeStatus.FAILED


def test_preset_lpj_is_recognised() -> None:
    output = ("[    0.000000] Calibrating delay loop (skipped) preset value.. 5600.00 BogoMIPS "
              "(lpj=28000000)\n[    0.020000] Run /bin/true as init process\n"
              "[    0.020000] Kernel panic - not syncing: Attempted to kill init! "
              "exitcode=0x00000000\n")
    result = probe.classify(output)
    assert result.ok and result.lpj == 28000000 and result.uptime == pytest.approx(0.02)


def test_argv_is_a_list_with_the_probe_settings(tmp_path: Path) -> None:
    argv = probe.probe_argv(Path("/k/linux"), tmp_path, ProbeSettings(seccomp=True, cpus=2,
                                                                      lpj=123))
    assert argv[0] == "/k/linux"
    for arg in ("seccomp=on", "ncpus=2", "lpj=123", "init=/bin/true", f"uml_dir={tmp_path}"):
        assert arg in argv
    assert "seccomp=on" not in probe.probe_argv(Path("/k"), tmp_path, ProbeSettings())


def test_cache_per_file_and_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UMLROOT_CACHE", str(tmp_path / "cache"))
    kernel = tmp_path / "linux"
    kernel.write_bytes(b"one")
    ok = ProbeResult(ProbeStatus.OK, uptime=0.02, lpj=99)
    probe.remember(kernel, ProbeSettings(seccomp=True), ok)
    assert probe.cached_probe(kernel, ProbeSettings(seccomp=True)) == ok
    assert probe.cached_probe(kernel, ProbeSettings()) is None
    assert probe.preset_lpj(kernel) == 99
    kernel.write_bytes(b"a different kernel")  # size and mtime change: verdict is stale
    assert probe.cached_probe(kernel, ProbeSettings(seccomp=True)) is None
    probe.remember(kernel, ProbeSettings(), ProbeResult(ProbeStatus.TIMEOUT))
    assert probe.cached_probe(kernel, ProbeSettings()) is None  # timeouts are not kept


def test_probe_uses_cache_without_booting(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UMLROOT_CACHE", str(tmp_path / "cache"))
    kernel = tmp_path / "linux"
    kernel.write_bytes(b"k")
    fp = ProbeResult(ProbeStatus.FP_REGS, detail="ptrace set fp regs failed, errno = 14")
    probe.remember(kernel, ProbeSettings(), fp)

    def no_boot(*args: object, **kwargs: object) -> None:
        raise AssertionError("booted although a verdict was cached")

    monkeypatch.setattr(probe, "boot_probe", no_boot)
    assert probe.probe(kernel) == fp


def test_cpu_fingerprint_is_stable() -> None:
    assert probe.cpu_fingerprint() == probe.cpu_fingerprint()


def test_memory_directory_is_read_from_the_boot() -> None:
    assert probe.classify(recorded("probe-ok-7.3.txt")).memory_dir == "/dev/shm"
    assert probe.classify(recorded("probe-noexec-tmpdir.txt")).memory_dir == "/mnt/noexec"
    memfd_boot = "\n".join(line for line in recorded("probe-ok-7.3.txt").splitlines()
                           if "tempdir" not in line and "Checking" not in line)
    assert probe.classify(memfd_boot).memory_dir is None


def test_memfd_kernel_in_a_docker_like_namespace() -> None:
    """Recorded: the kernel with the memfd patch, booted with /dev/shm a 64 MiB
    noexec tmpfs (`unshare -m`): it boots, and maps no file anywhere."""
    result = probe.classify(recorded("probe-memfd-noexec-shm.txt"))
    assert result.ok and result.memory_dir is None
