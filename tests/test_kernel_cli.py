"""The kernel CLI only parses options into dataclasses and calls the modules."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from umlroot.cli import kernel as cli_kernel
from umlroot.kernel import build, info
from umlroot.kernel.build import BuildOptions
from umlroot.kernel.info import InfoOptions


def test_build_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[BuildOptions] = []
    monkeypatch.setattr(build, "build_kernel", seen.append)
    result = CliRunner().invoke(cli_kernel.kernel_group, [
        "build", "--source", str(tmp_path), "--suite", "sid", "--mirror", "http://m/debian",
        "-j", "3", "--force", "--keep-tree"])
    assert result.exit_code == 0, result.output
    assert seen == [BuildOptions(source=tmp_path, suites=("sid",), mirror="http://m/debian",
                                 jobs=3, force=True, keep_tree=True)]
    CliRunner().invoke(cli_kernel.kernel_group, ["build"])
    assert seen[-1] == BuildOptions()


def test_info_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[InfoOptions] = []
    monkeypatch.setattr(info, "show_info", seen.append)
    result = CliRunner().invoke(cli_kernel.kernel_group,
                                ["info", "--boot-bench", "10", "--cpus", "2", "--no-lpj"])
    assert result.exit_code == 0, result.output
    assert seen == [InfoOptions(bench_runs=10, cpus=2, preset_lpj=False)]


def test_doctor_exit_status(monkeypatch: pytest.MonkeyPatch) -> None:
    from umlroot.cli import doctor
    monkeypatch.setattr(doctor, "run_doctor", lambda: False)
    assert CliRunner().invoke(cli_kernel.doctor_command, []).exit_code == 1
    monkeypatch.setattr(doctor, "run_doctor", lambda: True)
    assert CliRunner().invoke(cli_kernel.doctor_command, []).exit_code == 0
