"""Inside the guest, for `umlroot mkfs`: run the planned steps, in order, as root.

Started by the host as `python3 -I -B <this file> PLAN`, where PLAN is JSON:
{"steps": [[argv...], ...], "verbose": bool}. The guest sees the host's
files, so this is the host's own copy of the file; it imports nothing from
umlroot, so it runs whatever sys.path the host's umlroot came from.

Each step's output is kept unless it fails (mkfs tools are chatty), or
shown with "verbose". The first failing step ends the run with one line on
stderr and status 125 (umlroot's own failure); the guest then goes away
with the half-made image, which the host throws away.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

FAILED = 125


_CAUSE_WORDS = ("error", "cannot", "can't", "failed", "not ", "no ", "invalid", "too ")


def summary(output: bytes) -> str:
    """The line that says why: the first that names a cause (tar ends with
    "Exiting with failure status due to previous errors", mkfs tools start
    with a banner), else the last."""
    lines = [line.strip() for line in output.decode(errors="replace").splitlines()
             if line.strip()]
    for line in lines:
        lowered = line.lower()
        if any(word in lowered for word in _CAUSE_WORDS) and "previous errors" not in lowered:
            return line
    return lines[-1] if lines else "no message"


def run_step(argv: list[str], verbose: bool) -> int:
    if verbose:
        print("+ " + shlex.join(argv), file=sys.stderr, flush=True)
    try:
        # Shown on stderr: stdout is umlroot mkfs's own (the root hash).
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False,
                                stdout=sys.stderr.fileno() if verbose else subprocess.PIPE,
                                stderr=None if verbose else subprocess.STDOUT)
    except OSError as error:
        print(f"umlroot: mkfs: {argv[0]}: {error.strerror} in the guest", file=sys.stderr)
        return FAILED
    if result.returncode != 0:
        detail = "" if verbose else f": {summary(result.stdout)}"
        print(f"umlroot: mkfs: `{shlex.join(argv)}` failed with status "
              f"{result.returncode}{detail}", file=sys.stderr)
        return FAILED
    return 0


def main(args: list[str]) -> int:
    if len(args) != 1:
        print("umlroot: mkfs: the guest side takes one argument (the plan)", file=sys.stderr)
        return FAILED
    plan = json.loads(args[0])
    for argv in plan["steps"]:
        status = run_step(argv, bool(plan.get("verbose")))
        if status:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
