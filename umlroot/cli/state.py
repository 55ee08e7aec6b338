"""`umlroot state ...`: inspect --state files."""

from __future__ import annotations

from pathlib import Path

import click

from umlroot.guest.state import format_info, read_info


@click.group("state")
def state_group() -> None:
    """Inspect the state files made with `umlroot run --state FILE`."""


@state_group.command("info")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def info_command(file: Path) -> None:
    """Show FILE's size, creation time, run count and how many paths it holds."""
    click.echo(format_info(read_info(file)))
