"""One command in a fresh guest with the process's own stdio: what `umlroot
run`, `umlroot fakeroot` do with the API's `umlroot.run()`.

This module only adds what a command line does around it: stdio are the
process's own, signals go to CMD, and outcomes become one-line messages.
The caller gets the CompletedProcess (its returncode is the exit status).
"""

from __future__ import annotations

from collections.abc import Sequence

from umlroot import log
from umlroot.errors import ExitCode, TimeoutExpired, UmlrootError
from umlroot.guest.config import MachineConfig
from umlroot.guest.handle import run
from umlroot.guest.process import CompletedProcess
from umlroot.guest.writeback import print_report


def run_command(argv: Sequence[bytes], config: MachineConfig,
                timeout: float | None = None) -> CompletedProcess:
    """Run CMD; its outcome, already explained on stderr."""
    if not argv:
        raise UmlrootError("no command given", hint="umlroot run -- CMD [ARGS...]")
    try:
        result = run(argv, timeout=timeout, forward_signals=True, config=config)
    except TimeoutExpired as expired:
        log.say(expired.message)
        return CompletedProcess(argv, ExitCode.TIMEOUT, error=expired.message)
    if result.error is not None:
        log.say(result.error)
    print_report(result.writeback, verbose=config.verbose)
    return result
