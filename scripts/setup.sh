#!/usr/bin/env bash
# Set up umlroot for the current (unprivileged) user and show it working:
#   1. a virtualenv with umlroot in it (~/.local/share/umlroot-venv, or $UMLROOT_VENV)
#   2. the UML kernel, built from Debian's kernel sources into ~/.cache/umlroot (once)
#   3. `umlroot doctor`, then a demonstration: a device node made and chowned as root.
# The host packages it needs (compiler, kernel build tools, e2fsprogs) are installed
# by root once: see README.md ("Setup").
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${UMLROOT_VENV:-$HOME/.local/share/umlroot-venv}

if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "$repo[test]"
export PATH="$venv/bin:$PATH"

umlroot kernel build
umlroot doctor
demo=$(mktemp -d)
trap 'rm -rf "$demo"' EXIT
cd "$demo"
umlroot run -- sh -c 'mknod dev-null c 1 3 && chown 0:0 dev-null && ls -l dev-null'
echo "umlroot is ready: $venv/bin/umlroot"
