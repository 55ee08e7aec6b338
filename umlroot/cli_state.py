"""`umlroot state ...`: inspect --state files."""

from __future__ import annotations

import click


@click.group("state")
def state_group() -> None:
    """Inspect the state files made with `umlroot run --state FILE`."""
