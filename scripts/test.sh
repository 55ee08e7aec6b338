#!/usr/bin/env bash
# Run the test suite with the virtualenv that scripts/setup.sh made.
# Tests marked `uml` boot the real kernel; all of them run here.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${UMLROOT_VENV:-$HOME/.local/share/umlroot-venv}
export PATH="$venv/bin:$PATH"
cd "$repo"
# Import umlroot from the venv (as users get it), not from the checkout.
export PYTHONSAFEPATH=1
# Arguments go to pytest: options (`-m container`) and, instead of the whole
# suite, test files (`tests/test_run.py`).
args=("$@")
case " $* " in *" tests/"*) ;; *) args+=(tests) ;; esac
# The fault-injection tests that need small filesystems only root can mount
# run where .ci/run has mounted them ($UMLROOT_FAULT_MOUNTS); elsewhere they
# are left out (not skipped one by one), unless a -m says otherwise.
if [ -z "${UMLROOT_FAULT_MOUNTS:-}" ]; then
    case " $* " in *" -m "*) ;; *) args=(-m "not fault_mounts" "${args[@]}") ;; esac
fi
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "${args[@]}"
