from __future__ import annotations

from pathlib import Path

import pytest

from umlroot.errors import UmlrootError
from umlroot.kernel.version import KernelVersion, check_buildable


@pytest.mark.parametrize("text, expected", [
    ("linux-source-7.3.tar.xz", KernelVersion(7, 3, 0)),
    ("7.3.4-1~bpo13+1", KernelVersion(7, 3, 4)),
    ("linux-6.19.2.tar.gz", KernelVersion(6, 19, 2)),
    ("6.12", KernelVersion(6, 12, 0)),
])
def test_parse(text: str, expected: KernelVersion) -> None:
    assert KernelVersion.parse(text) == expected


def test_parse_rejects_text_without_version() -> None:
    with pytest.raises(UmlrootError, match="no kernel version"):
        KernelVersion.parse("linux-source.tar.xz")


def test_order_and_series() -> None:
    assert KernelVersion(6, 9) < KernelVersion(6, 13) < KernelVersion(7, 0)
    assert KernelVersion(7, 3, 4).series == "7.3"
    assert str(KernelVersion(7, 3, 4)) == "7.3.4"


def test_from_makefile(tmp_path: Path) -> None:
    makefile = tmp_path / "Makefile"
    makefile.write_text("# SPDX\nVERSION = 7\nPATCHLEVEL = 3\nSUBLEVEL = 4\nEXTRAVERSION =\n")
    assert KernelVersion.from_makefile(makefile) == KernelVersion(7, 3, 4)
    makefile.write_text("all:\n\ttrue\n")
    with pytest.raises(UmlrootError, match="does not look like a kernel Makefile"):
        KernelVersion.from_makefile(makefile)
    with pytest.raises(UmlrootError, match="cannot read"):
        KernelVersion.from_makefile(tmp_path / "missing")


def test_policy_refuses_before_6_13() -> None:
    with pytest.raises(UmlrootError, match="AVX-512/AMX") as info:
        check_buildable(KernelVersion(6, 12, 30))
    assert "\n" not in info.value.message


def test_policy_warns_without_seccomp_and_smp() -> None:
    warnings = check_buildable(KernelVersion(6, 13))
    assert len(warnings) == 2
    assert "seccomp" in warnings[0] and "SMP" in warnings[1]
    only_smp = check_buildable(KernelVersion(6, 16))
    assert len(only_smp) == 1 and "SMP" in only_smp[0]
    assert check_buildable(KernelVersion(6, 19)) == []
    assert check_buildable(KernelVersion(7, 3, 4)) == []
