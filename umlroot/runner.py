"""`umlroot run`: from options to CMD's exit status, through the Python API.

The CLI is a thin client of `umlroot.run()` (process.py), so the two cannot
drift: this module only adds what a command line does around it: stdio are
the process's own, signals go to CMD, and outcomes become one-line
messages and an exit status. Other commands (`umlroot fakeroot`, `umlroot
mkfs`) build a RunOptions and call run().
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from umlroot import log
from umlroot.errors import ExitCode, TimeoutExpired, UmlrootError
from umlroot.guest import GuestOptions
from umlroot.process import run as run_api
from umlroot.writeback import print_report


@dataclass(frozen=True, kw_only=True)
class RunOptions(GuestOptions):
    """`umlroot run`'s options: the machine's (GuestOptions, one definition
    for the CLI and the API) plus the command and its timeout."""

    argv: Sequence[bytes]
    timeout: float | None = None


def run(options: RunOptions) -> int:
    """Run CMD in a fresh guest with the process's own stdio; its exit status."""
    if not options.argv:
        raise UmlrootError("no command given", hint="umlroot run -- CMD [ARGS...]")
    try:
        result = run_api(
            options.argv, cwd=options.cwd, timeout=options.timeout,
            mem=options.mem, cpus=options.cpus, kernel=options.kernel,
            writable=options.writable, writeback=options.writeback,
            state=options.state, state_wait=options.state_wait, disks=options.disks,
            net=options.net, real_owners=options.real_owners,
            keep_scratch=options.keep_scratch, verbose=options.verbose,
            forward_signals=True)
    except TimeoutExpired as expired:
        log.say(expired.message)
        return ExitCode.TIMEOUT
    if result.error is not None:
        log.say(result.error)
    print_report(result.writeback, verbose=options.verbose)
    return result.returncode
