"""`umlroot run [OPTIONS] -- CMD [ARGS...]`."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import click

from umlroot.runner import RunOptions, run

_MEM_RE = re.compile(r"^[1-9][0-9]*[KMG]?$")


def _check_mem(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not _MEM_RE.match(value):
        raise click.BadParameter(f"{value!r} is not a size like 512M or 2G")
    return value


# No ignore_unknown_options: a mistyped option before `--` (`--nte`) is a
# usage error, not a command named `--nte`. Option parsing stops at `--` or
# at the first word that is not an option (`umlroot run ls -l` works).
@click.command("run", context_settings={"allow_interspersed_args": False},
               options_metavar="[OPTIONS] --",
               epilog="Exit status: COMMAND's own; 128+N if it died of signal N; 124 when "
                      "--timeout expired; 125 when umlroot failed; 126 if COMMAND cannot be "
                      "executed; 127 if it was not found.")
@click.option("--mem", default="1G", show_default=True, callback=_check_mem, metavar="SIZE",
              help="Guest memory (K/M/G suffix). Sparse: only what the guest uses costs host memory.")
@click.option("--cpus", type=click.IntRange(1, 8), default=1, show_default=True, metavar="N",
              help="Guest CPUs. More help parallel builds of separate processes (make -jN); "
                   "threads of one process run one at a time, so they gain nothing "
                   "(docs/kernel.md).")
@click.option("--kernel", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="UML kernel to boot [default: see `umlroot kernel info`].")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="SECONDS",
              help="Stop the guest after SECONDS; exit 124, nothing written back.")
@click.option("--writable", multiple=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Also write back changes under this directory (repeatable); `/`: "
                   "everything you may write, as `umlroot fakeroot` does.")
@click.option("--no-writeback", is_flag=True,
              help="Write nothing back to the host; changes are discarded.")
@click.option("--state", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Keep the guest's changes (owners, device nodes, xattrs) in FILE between runs.")
@click.option("--no-wait", is_flag=True,
              help="With --state: fail at once if another run is using FILE, instead of waiting.")
@click.option("--disk", "disks", multiple=True, metavar="PATH[:SIZE][:ro][:name=NAME]",
              help="Attach a host file as a guest block device, /dev/disk/by-umlroot/NAME "
                   "(repeatable, up to 15). SIZE creates or grows it, sparse.")
@click.option("--net", is_flag=True,
              help="Give the guest a network (user-mode slirp: no privileges). The host's "
                   "loopback services are at 10.0.2.2. Off by default: builds stay hermetic.")
@click.option("--real-owners", is_flag=True,
              help="Show host files with their real owners. By default your own files "
                   "show as root's (as under fakeroot and in a user namespace), so an "
                   "archive or image made of them is root's.")
@click.option("--keep-scratch", is_flag=True,
              help="Keep the run directory (scratch disk, kernel log) and print where.")
@click.option("-v", "--verbose", is_flag=True,
              help="Show the kernel log and a timing breakdown on stderr.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True,
                metavar="COMMAND [ARGS]...")
def run_command(mem: str, cpus: int, kernel: Path | None, timeout: float | None,
                writable: tuple[Path, ...], no_writeback: bool, state: Path | None,
                no_wait: bool, disks: tuple[str, ...], net: bool, real_owners: bool,
                keep_scratch: bool,
                verbose: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND as root (uid 0) inside a UML guest that sees the host's files.

    COMMAND's stdout, stderr, stdin and exit status are its own; changes
    under the current directory (and --writable dirs) come back to the host.
    """
    options = RunOptions(
        argv=[os.fsencode(arg) for arg in command],
        mem=mem, cpus=cpus, kernel=kernel, verbose=verbose, timeout=timeout,
        keep_scratch=keep_scratch, writable=writable, writeback=not no_writeback,
        state=state, state_wait=not no_wait, disks=disks, net=net, real_owners=real_owners,
    )
    sys.exit(run(options))
