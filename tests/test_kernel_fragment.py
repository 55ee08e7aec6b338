from __future__ import annotations

from pathlib import Path

import pytest

from umlroot.errors import UmlrootError
from umlroot.kernel import fragment
from umlroot.kernel.build import merge_fragment
from umlroot.kernel.fragment import Option


def test_shipped_fragment_parses_and_covers_the_issue() -> None:
    options = {o.name: o.value for o in fragment.parse_fragment(fragment.fragment_text())}
    for name in ("HOSTFS", "BLK_DEV_UBD", "BLK_DEV_LOOP", "EXT4_FS", "EXT4_FS_POSIX_ACL",
                 "EXT4_FS_SECURITY", "VFAT_FS", "ISO9660_FS", "SQUASHFS", "SQUASHFS_XZ",
                 "SQUASHFS_ZSTD", "EROFS_FS", "OVERLAY_FS", "TMPFS", "TMPFS_XATTR",
                 "TMPFS_POSIX_ACL", "DEVTMPFS", "UNIX", "SECCOMP", "SMP", "MAGIC_SYSRQ",
                 "DEBUG_INFO_NONE"):
        assert options[f"CONFIG_{name}"] == "y", name
    assert int(options["CONFIG_NR_CPUS"] or 0) >= 8
    for name in ("MODULES", "SOUND", "RAID6_PQ_BENCHMARK", "BLK_DEV_NBD"):
        assert options[f"CONFIG_{name}"] is None, name


def test_shipped_fragment_comments_every_option() -> None:
    """Each block of option lines follows a comment that says why."""
    lines = fragment.fragment_text().splitlines()

    def is_option(line: str) -> bool:
        return line.startswith("CONFIG_") or line.endswith(" is not set")

    for number, line in enumerate(lines):
        if is_option(line):
            first = number
            while first > 0 and is_option(lines[first - 1]):
                first -= 1
            assert first > 0 and lines[first - 1].startswith("# "), \
                f"line {number + 1} has no comment: {line}"


def test_parse_rejects_garbage_and_duplicates() -> None:
    with pytest.raises(UmlrootError, match=":2: not a Kconfig line"):
        fragment.parse_fragment("CONFIG_A=y\nCONFIG_B y\n")
    with pytest.raises(UmlrootError, match="already set on line 1"):
        fragment.parse_fragment("CONFIG_A=y\n# CONFIG_A is not set\n")


def test_hash_ignores_comments_but_not_values() -> None:
    base = fragment.fragment_hash("# why\nCONFIG_A=y\n")
    assert fragment.fragment_hash("# another why\n\nCONFIG_A=y\n") == base
    assert fragment.fragment_hash("CONFIG_A=m\n") != base


def test_verify_reports_dropped_option(tmp_path: Path) -> None:
    options = fragment.parse_fragment("CONFIG_A=y\nCONFIG_N=8\n# CONFIG_B is not set\n"
                                      "# CONFIG_GONE is not set\n")
    config = tmp_path / ".config"
    config.write_text("CONFIG_A=y\nCONFIG_N=8\n# CONFIG_B is not set\n")
    fragment.verify_config(options, config)  # absent GONE counts as "not set"
    config.write_text("CONFIG_N=8\n# CONFIG_B is not set\n")
    with pytest.raises(UmlrootError, match="CONFIG_A: fragment says y, .config has nothing"):
        fragment.verify_config(options, config)
    config.write_text("CONFIG_A=y\nCONFIG_N=4\nCONFIG_B=y\n")
    with pytest.raises(UmlrootError, match="lacks 2 option") as info:
        fragment.verify_config(options, config)
    assert "CONFIG_B: fragment says not set, .config has y" in info.value.message


def test_merge_replaces_old_lines() -> None:
    config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m\nCONFIG_KEEP=y\n"
    merged = merge_fragment(config, [Option("CONFIG_A", None), Option("CONFIG_B", "y"),
                                     Option("CONFIG_C", "y")])
    values = fragment.parse_config(merged)
    assert values == {"CONFIG_B": "y", "CONFIG_C": "y", "CONFIG_KEEP": "y"}
    assert "# CONFIG_A is not set" in merged.splitlines()
    assert merged.count("CONFIG_B") == 1


def test_smp_enabled() -> None:
    assert fragment.smp_enabled({"CONFIG_SMP": "y"})
    assert not fragment.smp_enabled({})
