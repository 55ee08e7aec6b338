from __future__ import annotations

import resource
from pathlib import Path

import pytest

from umlroot import doctor
from umlroot.doctor import Check, Status


def test_python_ok() -> None:
    assert doctor.check_python().status is Status.OK


def test_temp_dir_exec_and_space(tmp_path: Path) -> None:
    check = doctor.check_temp_dir(tmp_path)
    assert check.status in (Status.OK, Status.WARN)
    assert "exec mmap works" in check.detail


def test_temp_dir_missing(tmp_path: Path) -> None:
    check = doctor.check_temp_dir(tmp_path / "missing")
    assert check.status is Status.FAIL and check.hint and "TMPDIR" in check.hint


def test_uml_temp_dir_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TMP", str(tmp_path))
    assert doctor.uml_temp_dir() == tmp_path


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
