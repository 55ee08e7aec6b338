"""Command line: `umlroot run`, `umlroot fakeroot`, `umlroot kernel ...`, `umlroot doctor`,
`umlroot state ...`, `umlroot mkfs`.

Each command parses its options into a frozen dataclass and hands it to the
module that does the work; this file only translates errors into one line
on stderr and an exit code.
"""

from __future__ import annotations

import os
import shutil
import sys
import traceback
from typing import Any

import click

from umlroot.version import __version__
from umlroot.errors import ExitCode, UmlrootError

_debug = False


def report_error(error: UmlrootError) -> None:
    click.echo(f"umlroot: {error.message}", err=True)
    if error.details:
        click.echo(error.details.rstrip("\n"), err=True)
    if error.hint:
        click.echo(f"umlroot: hint: {error.hint}", err=True)


class UmlrootGroup(click.Group):
    """Turns UmlrootError (and any unexpected exception) into one line + exit code."""

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as error:
            # `dpkg-buildpackage -rumlroot` runs `umlroot debian/rules clean`.
            if args and ("/" in args[0] or shutil.which(args[0])):
                raise click.UsageError(
                    f"{error.message} (to run {args[0]} as root: `umlroot fakeroot {args[0]} "
                    "...` or `umlroot run -- ...`; as a gain-root command: "
                    "-r'umlroot fakeroot')", ctx) from None
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UmlrootError as error:
            if _debug:
                traceback.print_exc()
            report_error(error)
            ctx.exit(error.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            ctx.exit(ExitCode.SIGNAL_BASE + 2)
        except Exception as error:  # noqa: BLE001 - last line of defence
            if _debug:
                traceback.print_exc()
            click.echo(f"umlroot: internal error: {type(error).__name__}: {error}", err=True)
            click.echo("umlroot: hint: rerun with --debug for a traceback", err=True)
            ctx.exit(ExitCode.UMLROOT)


@click.group(cls=UmlrootGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and the commands umlroot runs.")
@click.version_option(__version__, package_name="umlroot")  # works from a checkout too
def cli(debug: bool) -> None:
    """Run a command as real root, without privileges, inside a User Mode Linux kernel."""
    global _debug
    _debug = debug
    if debug:
        from umlroot import log

        log.enable_debug()


def _register_commands() -> None:
    from umlroot.cli.fakeroot import fakeroot_command
    from umlroot.cli.kernel import doctor_command, kernel_group
    from umlroot.cli.mkfs import mkfs_command
    from umlroot.cli.run import run_cli
    from umlroot.cli.state import state_group

    cli.add_command(run_cli)
    cli.add_command(fakeroot_command)
    cli.add_command(kernel_group)
    cli.add_command(doctor_command)
    cli.add_command(state_group)
    cli.add_command(mkfs_command)


_register_commands()


def _ensure_standard_fds() -> None:
    """If umlroot was started with fd 0, 1 or 2 closed, the next file it opens
    would take that number and CMD's output would land in it: hold each
    closed one open on /dev/null instead."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def main() -> None:
    """Console entry point. Usage errors exit 125, like docker/podman run and
    env, so that 1-124 and 126-255 stay CMD's own statuses."""
    _ensure_standard_fds()
    try:
        status = cli.main(standalone_mode=False)
    except click.UsageError as error:
        command = error.ctx.command_path if error.ctx else "umlroot"
        click.echo(f"umlroot: {error.format_message()}", err=True)
        click.echo(f"umlroot: hint: see `{command} --help`", err=True)
        sys.exit(ExitCode.UMLROOT)
    except click.ClickException as error:
        click.echo(f"umlroot: {error.format_message()}", err=True)
        sys.exit(ExitCode.UMLROOT)
    except click.Abort:
        sys.exit(ExitCode.SIGNAL_BASE + 2)
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
