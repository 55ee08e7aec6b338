#!/usr/bin/env bash
# The image workload of issue 5: a 1 GiB ext4 image holding a copy of
# /usr/share/doc (about 114 MB, 5,300 entries) owned by 0:0, plus dev/console
# (c 5 1). Compares the fakeroot anchor with two umlroot recipes and prints
# the median of N runs of each (wall clock, seconds); every image is checked
# with e2fsck -fn and debugfs.
#
#   bench/image_workload.sh [RUNS]        (default 5)
#
# Environment: UMLROOT (command, default: umlroot on PATH), UMLROOT_ARGS
# (extra `umlroot run` options, e.g. "--cpus 1"), BENCH_DIR (work directory,
# default: a new one under /var/tmp; the tree and images live there and are
# removed at the end unless BENCH_DIR was given), SOURCE (default
# /usr/share/doc), ONLY (a subset of: anchor umlroot_fast umlroot_guest).
set -euo pipefail

runs=${1:-5}
umlroot=${UMLROOT:-umlroot}
source_tree=${SOURCE:-/usr/share/doc}
if [[ -n ${BENCH_DIR:-} ]]; then
    work=$BENCH_DIR
    mkdir -p "$work"
else
    work=$(mktemp -d /var/tmp/umlroot-bench.XXXXXX)
    trap 'rm -rf "$work"' EXIT
fi
# mkfs.ext4 lives in /sbin on Debian, which a normal user's PATH lacks.
export PATH=$PATH:/usr/sbin:/sbin

cd "$work"
if [[ ! -d tree ]]; then
    cp -a "$source_tree" tree
    mkdir -p tree/dev
fi
echo "tree: $(du -sh --apparent-size tree | cut -f1), $(find tree | wc -l) entries;" \
     "$(nproc) host CPUs; load before: $(cut -d' ' -f1-3 /proc/loadavg)"

now() { date +%s.%N; }

median() {
    sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# The way people do it today without root.
anchor() {
    rm -f img tree/dev/console
    # mke2fs says "Creating regular file img" even with -q.
    fakeroot sh -c 'chown -R 0:0 tree && mknod tree/dev/console c 5 1 && mkfs.ext4 -q -d tree img 1G' \
        2>&1 | { grep -v '^Creating regular file' || true; }
}

# umlroot, fastest recipe: the host's own mkfs.ext4 copies the data (no root
# needed for that), umlroot does only what needs root: chown and mknod in the
# mounted image. docs/images.md, recipe "ext4-fast".
umlroot_fast() {
    rm -f img tree/dev/console  # fakeroot's mknod leaves a plain file
    mkfs.ext4 -q -d tree img 1G 2>&1 | { grep -v '^Creating regular file' || true; }
    # shellcheck disable=SC2086
    "$umlroot" run --no-writeback ${UMLROOT_ARGS:-} --disk img -- sh -c \
        'mount "$UMLROOT_DISK_IMG" /mnt && chown -R 0:0 /mnt && mknod /mnt/dev/console c 5 1 && umount /mnt'
}

# umlroot, everything inside the guest: chown through the overlay (metacopy:
# metadata only), then mkfs.ext4 -d reads the tree through hostfs (4 KiB per
# host read: the slow part) into the attached image. docs/images.md, recipe "ext4".
umlroot_guest() {
    rm -f img tree/dev/console
    # shellcheck disable=SC2086
    "$umlroot" run --no-writeback ${UMLROOT_ARGS:-} --disk img:1G -- sh -c \
        'chown -R 0:0 tree && mknod tree/dev/console c 5 1 && mkfs.ext4 -q -E nodiscard -d tree "$UMLROOT_DISK_IMG"'
}

check() {
    e2fsck -fn img >/dev/null 2>&1 || { echo "e2fsck -fn img failed" >&2; exit 1; }
    debugfs -R 'stat /dev/console' img 2>/dev/null | grep -q 'Device major/minor number: 05:01' \
        || { echo "img has no dev/console c 5 1" >&2; exit 1; }
}

measure() {
    local name=$1 times=()
    for ((i = 0; i < runs; i++)); do
        local start end
        start=$(now)
        "$name"
        end=$(now)
        check
        times+=("$(echo "$end - $start" | bc)")
    done
    printf '%s: median %.2f s of %d (%s)\n' "$name" \
        "$(printf '%s\n' "${times[@]}" | median)" "$runs" "${times[*]}"
}

for name in ${ONLY:-anchor umlroot_fast umlroot_guest}; do
    measure "$name"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
