"""The machine's options are declared once (MachineConfig); `umlroot run`'s
flags must agree with its fields, and every field is checked."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from umlroot.cli.run import run_cli
from umlroot.errors import UmlrootError
from umlroot.guest.config import API_ONLY, MAX_CPUS, NEGATED_FLAGS, MachineConfig
from umlroot.images.options import parse_size as mkfs_size
from umlroot.sizes import parse_size

# `run`'s own options, not the machine's.
COMMAND_ONLY = {"command", "timeout"}


def test_click_options_and_fields_agree() -> None:
    flags = {p.name for p in run_cli.params} - COMMAND_ONLY
    as_fields = {NEGATED_FLAGS.get(name, name) for name in flags if name is not None}
    fields = {f.name for f in dataclasses.fields(MachineConfig)} - set(API_ONLY)
    assert as_fields == fields


def test_click_defaults_are_the_fields_defaults() -> None:
    ctx = run_cli.make_context("run", ["--", "true"])
    machine = {name: value for name, value in ctx.params.items() if name not in COMMAND_ONLY}
    assert MachineConfig.from_cli(machine) == MachineConfig()


@pytest.mark.parametrize("cpus", [0, MAX_CPUS + 1, 50])
def test_cpus_out_of_range(cpus: int) -> None:
    with pytest.raises(UmlrootError, match="cpus"):
        MachineConfig(cpus=cpus)


@pytest.mark.parametrize("mem", ["0", "1.5G", "lots", ""])
def test_mem_not_a_size(mem: str) -> None:
    with pytest.raises(UmlrootError, match="mem"):
        MachineConfig(mem=mem)


def test_bad_disk_spec_fails_at_once() -> None:
    with pytest.raises(UmlrootError, match="--disk"):
        MachineConfig(disks=["img:0"])


def test_api_arguments_are_normalised() -> None:
    config = MachineConfig.of(None, kernel="k", writable=["a"], disks=[Path("d")], cwd=b"/x")
    assert config.kernel == Path("k") and config.writable == (Path("a"),)
    assert config.disks == ("d",) and config.cwd == Path("/x")


def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        MachineConfig.of(None, memory="1G")


def test_one_size_grammar() -> None:
    for text in ("4096", "512M", "2g", "1T"):
        size = parse_size(text)
        assert size is not None
        assert mkfs_size(text).value == size
        assert mkfs_size("+" + text).value == size
    for text in ("1.5G", "1GB", "G", "-1M"):
        assert parse_size(text) is None
