"""The one size grammar: `--mem`, `--disk PATH:SIZE` and `mkfs --size`.

A size is a number of bytes with an optional binary suffix K, M, G or T, in
either case (`4096`, `512M`, `2g`); nothing else (no fractions, no `B`).
Each user adds its own range (`--mem` above 0, a disk a multiple of 512,
`mkfs --size` a `+` for "on top of the content").
"""

from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^([0-9]+)([KMGT]?)$", re.IGNORECASE)
_FACTORS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
EXAMPLES = "512M or 2G"


def parse_size(text: str) -> int | None:
    """`512M` -> 536870912; None if TEXT is not a size at all."""
    match = _SIZE_RE.match(text)
    if not match:
        return None
    return int(match.group(1)) * _FACTORS[match.group(2).upper()]
