from __future__ import annotations

import resource
import tempfile
from pathlib import Path

import pytest

from umlroot.cli import doctor
from umlroot.kernel import memory as guestmem
from umlroot.cli.doctor import Check, Status
from umlroot.kernel import probe
from umlroot.kernel.select import KernelChoice, Origin


def test_python_ok() -> None:
    assert doctor.check_python().status is Status.OK


def choice(patches: tuple[str, ...] | None) -> KernelChoice:
    return KernelChoice(Path("/k/linux"), "7.3.4", Origin.CACHE, "test", patches=patches)


def test_memory_dir_exec_and_space(tmp_path: Path) -> None:
    check = doctor.check_memory_dir(tmp_path)
    assert check.status in (Status.OK, Status.WARN)
    assert "exec mmap works" in check.detail


def test_memory_dir_missing_names_the_fix_run_honours(tmp_path: Path) -> None:
    check = doctor.check_memory_dir(tmp_path / "missing")
    assert check.status is Status.FAIL and check.hint
    # Not TMPDIR: run takes it away from UML on purpose.
    assert "UMLROOT_MEMDIR" in check.hint and "TMPDIR" not in check.hint.replace(
        "UMLROOT_MEMDIR", "")
    assert "memfd" in check.hint


def test_memfd_kernel_needs_no_memory_dir(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setenv("UMLROOT_MEMDIR", str(tmp_path / "missing"))
    with_memfd = doctor.check_memory(choice(("0001-a.patch", "0004-um-memfd-physmem.patch")),
                                     None)
    assert with_memfd.status is Status.OK and "memfd" in with_memfd.detail
    without = doctor.check_memory(choice(("0001-a.patch",)), None)
    assert without.status is Status.FAIL and str(tmp_path / "missing") in without.detail


def test_unknown_kernel_judged_by_its_boot(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setenv("UMLROOT_MEMDIR", str(tmp_path / "missing"))
    file_boot = probe.ProbeResult(probe.ProbeStatus.OK, memory_dir="/dev/shm")
    memfd_boot = probe.ProbeResult(probe.ProbeStatus.OK, memory_dir=None)
    assert doctor.check_memory(choice(None), file_boot).status is Status.FAIL
    assert doctor.check_memory(choice(None), memfd_boot).status is Status.OK


def test_memory_search_dir_follows_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # run takes TMPDIR away from UML
    monkeypatch.delenv("UMLROOT_MEMDIR", raising=False)
    assert guestmem.search_dir() == Path("/dev/shm")
    assert "TMPDIR" not in guestmem.uml_environment()
    monkeypatch.setenv("UMLROOT_MEMDIR", str(tmp_path))
    assert guestmem.search_dir() == tmp_path
    assert guestmem.uml_environment()["TMPDIR"] == str(tmp_path)


def test_nofile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 1024))
    assert doctor.check_nofile().status is Status.WARN
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 524288))
    assert doctor.check_nofile().status is Status.OK


def test_build_tools_only_fatal_without_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "missing_tools", lambda: ["bison"])
    assert doctor.check_build_tools(have_kernel=True).status is Status.WARN
    assert doctor.check_build_tools(have_kernel=False).status is Status.FAIL


def test_static_compile_probe() -> None:
    check = doctor.compile_static_probe("cc")
    assert check.status in (Status.OK, Status.FAIL)


def test_scratch_space_says_where_on_what_and_how_much(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches its answer
    check = doctor.check_scratch_space()
    assert check.detail.startswith(f"{tmp_path} (")
    assert "GiB free" in check.detail
    monkeypatch.setattr(doctor.rundir, "filesystem_type", lambda _path: "tmpfs")
    in_memory = doctor.check_scratch_space()
    assert in_memory.status is Status.WARN and "RAM twice" in in_memory.detail


def test_line_format() -> None:
    line = Check("kernel", Status.FAIL, "no UML kernel found", "run `umlroot kernel build`").line()
    assert line.splitlines() == ["FAIL  kernel: no UML kernel found",
                                 "      fix: run `umlroot kernel build`"]
    assert Check("cpu", Status.INFO, "avx512f", "unused").line() == "INFO  cpu: avx512f"


def test_exit_status_follows_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "collect", lambda echo: [Check("a", Status.OK, ""),
                                                          Check("b", Status.WARN, "")])
    assert doctor.run_doctor() is True
    monkeypatch.setattr(doctor, "collect", lambda echo: [Check("a", Status.FAIL, "")])
    assert doctor.run_doctor() is False


def test_network_helper_checked_for_real() -> None:
    check = doctor.check_network()
    assert check.status is doctor.Status.OK, check.line()
    assert "10.0.2.2" in check.detail


def test_missing_network_helper_is_a_warning_naming_the_packages(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    check = doctor.check_network()
    assert check.status is doctor.Status.WARN
    assert "vdeplug" in check.line() and "libvdeplug-slirp" in check.line()
