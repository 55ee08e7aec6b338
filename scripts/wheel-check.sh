#!/usr/bin/env bash
# The newcomer's path, checked end to end (CI runs it after scripts/setup.sh):
#   1. `umlroot kernel wheel` packs the kernel this user built (setup.sh's venv
#      and cache) into a platform wheel;
#   2. a fresh virtualenv gets umlroot (this checkout) and that wheel;
#   3. with an empty cache and no C compiler on PATH, `umlroot run -- id -u`
#      must print 0, and import + first run must take at most
#      $UMLROOT_FIRST_RUN_LIMIT seconds (default 3);
#   4. `umlroot kernel info` must say the kernel came from the wheel, and
#      `umlroot doctor` must pass with the wheel's prebuilt guest init.
# Prints one summary line: wheel name and size, the first run's time.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${UMLROOT_VENV:-$HOME/.local/share/umlroot-venv}
limit=${UMLROOT_FIRST_RUN_LIMIT:-3}
work=$(mktemp -d "${TMPDIR:-/tmp}/umlroot-wheel-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

whl=$("$venv/bin/umlroot" kernel wheel "$work/dist")

/usr/bin/python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "$repo" "$whl"

# A PATH of links to every command on the usual PATH except the C compilers:
# what a CI image or a container without gcc has.
mkdir "$work/bin"
for dir in /usr/local/bin /usr/bin /bin /usr/sbin /sbin; do
    [ -d "$dir" ] || continue
    for tool in "$dir"/*; do
        name=${tool##*/}
        case $name in
            cc | c89 | c99 | gcc | gcc-* | *-gcc | *-gcc-* | clang* | tcc | *-linux-gnu-*) continue ;;
        esac
        [ -e "$work/bin/$name" ] || ln -s "$tool" "$work/bin/$name"
    done
done
clean_env=(env -i HOME="$HOME" USER="${USER:-}" LANG=C.UTF-8
           PATH="$work/venv/bin:$work/bin" UMLROOT_CACHE="$work/cache")
if "${clean_env[@]}" sh -c 'command -v cc || command -v gcc' >/dev/null; then
    echo "wheel check: a C compiler is still on PATH" >&2
    exit 1
fi

mkdir "$work/run"
cd "$work/run"
start=$(date +%s%N)
uid=$("${clean_env[@]}" umlroot run -- id -u)
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
if [ "$uid" != 0 ]; then
    echo "wheel check: umlroot run -- id -u printed '$uid', not 0" >&2
    exit 1
fi
"${clean_env[@]}" umlroot kernel info | tee "$work/info"
grep -q '^origin:  wheel$' "$work/info"
"${clean_env[@]}" umlroot doctor | tee "$work/doctor"
grep -q 'OK    guest init: prebuilt, from the umlroot-kernel wheel' "$work/doctor"
if [ -e "$work/cache/kernels" ] || [ -e "$work/cache/init" ]; then
    echo "wheel check: umlroot built or copied a kernel or init into the empty cache" >&2
    exit 1
fi

size_kib=$(( $(stat -c %s "$whl") / 1024 ))
seconds=$(printf '%d.%03d' $((elapsed_ms / 1000)) $((elapsed_ms % 1000)))
echo "wheel check: ${whl##*/} (${size_kib} KiB): fresh venv, empty cache, no compiler:" \
     "umlroot run -- id -u printed 0 in ${seconds} s (import + first run; limit ${limit} s)"
if [ "$elapsed_ms" -gt $(( ${limit%.*} * 1000 )) ]; then
    echo "wheel check: the first run took longer than ${limit} s" >&2
    exit 1
fi
