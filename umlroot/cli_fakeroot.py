"""`umlroot fakeroot [OPTIONS] [--] [COMMAND [ARGS...]]`: fakeroot's command line.

Every place that takes a gain-root command takes this one:
`dpkg-buildpackage -r'umlroot fakeroot'`, `debuild -r'umlroot fakeroot'`,
`DEB_GAIN_ROOT_CMD='umlroot fakeroot'`, scripts calling `fakeroot -- CMD`.
fakeroot's options are all accepted (the same short and long names, and
option parsing stops at the first word that is not an option, like its
`getopt +...`); those that tune fakeroot's own machinery mean nothing here
and are ignored, as their help says.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from umlroot import __version__
from umlroot.fakeroot import FakerootOptions, run_fakeroot

_IGNORED = "Accepted for fakeroot compatibility and ignored: "


@click.command("fakeroot", context_settings={"allow_interspersed_args": False},
               options_metavar="[OPTIONS] [--]",
               epilog="Exit status: as `umlroot run` (COMMAND's own; 125 when umlroot failed; "
                      "126/127 when COMMAND cannot be executed / is not found).")
@click.option("-s", "save", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Save the state (owners, modes, device nodes, xattrs) to FILE when COMMAND "
                   "has finished. FILE is a `umlroot run --state` file.")
@click.option("-i", "load", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Start from the state saved in FILE (by -s, or by `umlroot run --state`). "
                   "With -s of the same FILE it is updated in place.")
@click.option("--net", is_flag=True,
              help="Give COMMAND a network, as `umlroot run --net` (not a fakeroot option; "
                   "off by default).")
@click.option("-u", "--unknown-is-real", is_flag=True,
              help="Host files show their real owners (`umlroot run --real-owners`). "
                   "Without it your own files show as root's, as under fakeroot.")
@click.option("-l", "--lib", metavar="LIB", help=_IGNORED + "there is no preload library.")
@click.option("-f", "--faked", metavar="BINARY", help=_IGNORED + "there is no faked daemon.")
@click.option("-b", "--fd-base", metavar="FD", help=_IGNORED + "there is no faked connection.")
@click.version_option(__version__, "-v", "--version", package_name="umlroot",
                      message="umlroot fakeroot %(version)s (fakeroot's command line, "
                              "a real kernel's root)")
@click.help_option("-h", "--help")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[COMMAND [ARGS]...]")
def fakeroot_command(save: Path | None, load: Path | None, net: bool, unknown_is_real: bool,
                     lib: str | None, faked: str | None, fd_base: str | None,
                     command: tuple[str, ...]) -> None:
    """Run COMMAND as root, like fakeroot: what it changes anywhere you may
    write comes back to the host. Without COMMAND, your $SHELL.

    Same as `umlroot run --writable / -- COMMAND`, with fakeroot's options.
    """
    del lib, faked, fd_base  # accepted, meaningless here
    options = FakerootOptions(command=[os.fsencode(arg) for arg in command],
                              load=load, save=save, net=net, real_owners=unknown_is_real)
    sys.exit(run_fakeroot(options))
