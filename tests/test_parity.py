"""Parity with fakeroot (issue 18): what a user sees of files made *outside*.

Each idiom runs under the host's `fakeroot` and under `umlroot fakeroot`, on
identical copies of a tree the test made as the invoking user, and what the
user would see (listings, stat output, archive and image contents) must be the
same: both tools show your own files as root's. fakeroot is the yardstick,
except where it lies and a real kernel cannot (a static binary's stat, a device
node read by a later system call): those tests say so and check that umlroot's
answer is the real one.

To keep guest time low, the idioms and edge cases run as one script, once
under each tool (one boot); the script prints a labelled section per idiom and
each idiom is one test comparing its section. The `-u`/`--real-owners` view,
`umlroot run`, the API keyword, the `-s`/`-i` round trips and `umlroot mkfs`
boot on their own (about ten boots, 10 s, in all).

Meaningless as root (root's files are root's anyway): skipped when run as uid
0. CI runs the suite as an ordinary user.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import UMLROOT, run_umlroot

pytestmark = [
    pytest.mark.uml,
    pytest.mark.skipif(os.geteuid() == 0,
                       reason="run as root: every host file of yours is root's already, so "
                              "there is nothing to compare (CI runs this as an ordinary user)"),
    pytest.mark.skipif(shutil.which("fakeroot") is None, reason="fakeroot is not installed"),
]

# Whole seconds: hostfs gives the guest the host's times in whole seconds.
MTIME = 1_700_000_000
ME, MY_GID = os.getuid(), os.getgid()
# A supplementary group of yours, for a file of yours whose group is not your own gid.
OTHER_GID = next((g for g in sorted(os.getgroups()) if g != MY_GID), None)


def another_users_file() -> str:
    """A host path owned by neither root nor you (APT's download directories
    belong to _apt on Debian), or '' when there is none."""
    for path in ("/var/cache/apt/archives/partial", "/var/lib/apt/lists/partial"):
        try:
            owner = os.lstat(path).st_uid
        except OSError:
            continue
        if owner not in (0, ME):
            return path
    return ""


# The caller's environment (UMLROOT_* and TMPDIR included) with fixed locale and zone.
ENV = {**os.environ, "LANG": "C", "LC_ALL": "C", "TZ": "UTC", "HOST_UID": str(ME),
       "HOST_GID": str(MY_GID), "OTHER_OWNED": another_users_file()}
STATIC_STAT_C = r"""
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv) {
    printf("uid %u\n", (unsigned)getuid());
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (lstat(argv[i], &st) != 0) { perror(argv[i]); return 1; }
        printf("%s %u %u\n", argv[i], (unsigned)st.st_uid, (unsigned)st.st_gid);
    }
    return 0;
}
"""


# ---- the tree, made outside by the invoking user -------------------------------------------


def make_tree(top: Path) -> None:
    """tree/: files, a setuid file, a private file, a setgid directory, a
    hard link, a symlink; pkg/: a binary package tree for dpkg-deb; an
    archive with foreign numeric owners for tar -x; grp/: a file and a setgid
    directory of a supplementary group of yours (if you have one); acl/file
    with an ACL entry for nobody (if setfacl is installed)."""
    files = {
        "tree/usr/bin/prog": (b"#!/bin/sh\necho prog\n", 0o755),
        "tree/usr/bin/suid": (b"#!/bin/sh\necho suid\n", 0o4755),
        "tree/etc/conf": (b"key=value\n", 0o644),
        "tree/etc/secret": (b"s3cret\n", 0o600),
        "tree/var/lib/shared/data": (b"data\n", 0o664),
        "pkg/DEBIAN/control": (b"Package: parity\nVersion: 1.0\nArchitecture: all\n"
                               b"Maintainer: Parity <parity@example.org>\n"
                               b"Description: parity test package\n", 0o644),
        "pkg/usr/bin/parity": (b"#!/bin/sh\necho parity\n", 0o755),
        "pkg/usr/bin/parity-suid": (b"#!/bin/sh\n", 0o4755),
        "pkg/usr/share/doc/parity/copyright": (b"free\n", 0o644),
    }
    for name, (data, mode) in files.items():
        path = top / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    (top / "tree/empty").mkdir(mode=0o700)
    (top / "tree/empty").chmod(0o700)
    (top / "tree/var/lib/shared").chmod(0o2775)
    os.link(top / "tree/etc/conf", top / "tree/etc/hard")
    os.symlink("prog", top / "tree/usr/bin/lnk")
    os.symlink("parity", top / "pkg/usr/bin/parity-link")
    with tarfile.open(top / "foreign.tar", "w", format=tarfile.GNU_FORMAT) as archive:
        for name, uid, gid, mode in (("foreign", 1234, 5678, 0o755),
                                     ("foreign/file", 4321, 8765, 0o640)):
            info = tarfile.TarInfo(name)
            info.uid, info.gid, info.mode, info.mtime = uid, gid, mode, MTIME
            if name.endswith("file"):
                info.size = 2
                archive.addfile(info, io.BytesIO(b"x\n"))
            else:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
    if OTHER_GID is not None:
        (top / "grp/sgid").mkdir(parents=True)
        (top / "grp/file").write_bytes(b"group\n")
        for path in (top / "grp/sgid", top / "grp/file"):
            os.chown(path, -1, OTHER_GID)
        (top / "grp/sgid").chmod(0o2775)
        (top / "grp/file").chmod(0o644)
    (top / "acl").mkdir()
    (top / "acl/file").write_bytes(b"acl\n")
    (top / "acl/file").chmod(0o644)
    if shutil.which("setfacl"):
        subprocess.run(["setfacl", "-m", "u:nobody:rx", str(top / "acl/file")], check=False,
                       capture_output=True)
    for path in [top, *top.rglob("*")]:
        os.utime(path, (MTIME, MTIME), follow_symlinks=False)


# ---- the idioms ---------------------------------------------------------------------------

# Each section's body runs in a subshell in the workspace (tree/, pkg/,
# foreign.tar, static-stat, out/); `skip WHAT` when a tool is missing. Order
# matters only at the end: the last sections change tree/ itself.
LIST_TREE = "find tree | sort"
STAT_FMT = "'%n %u %g %U %G %A %F %h'"


@dataclass(frozen=True)
class Idiom:
    name: str
    body: str
    needs: tuple[str, ...] = ()
    # Applied to both outputs before comparing (fields neither tool controls).
    normalize: Callable[[str], str] | None = None


def _drop_iso_extents(text: str) -> str:
    # isoinfo -l: "[ extent flags]" and the day of the root directory's record.
    text = re.sub(r"\[\s*\d+\s+\d+\]", "[]", text)
    return re.sub(r"\w{3}\s+\d+\s+\d{4}", "DATE", text)


IDIOMS = [
    Idiom("id", "id -u; id -g; id -un; id -gn; whoami"),
    Idiom("stat -c", f"{LIST_TREE} | xargs stat -c {STAT_FMT}"),
    Idiom("ls -ln", "ls -lnR tree | grep -v '^total'"),
    Idiom("ls -l (names)", "ls -lR tree | grep -v '^total'"),
    Idiom("find -user root", "find tree -user root -group root | sort; echo not-root:; "
                             "find tree ! -user root | sort; find tree -uid 0 | wc -l"),
    Idiom("find -perm -4000", "find tree -perm -4000 -user root -exec ls -ln {} +"),
    Idiom("python os.stat", "python3 -c 'import os, stat, sys\n"
                            "for p in sys.stdin.read().split():\n"
                            "    s = os.lstat(p)\n"
                            "    print(p, s.st_uid, s.st_gid, oct(s.st_mode), s.st_nlink)' "
                            f"< <({LIST_TREE})", needs=("python3",)),
    Idiom("perl stat", f"{LIST_TREE} | perl -ne 'chomp; my @s = lstat($_); "
                       "printf \"%s %d %d %o\\n\", $_, $s[4], $s[5], $s[2]'",
          needs=("perl",)),
    Idiom("test -O/-G", f"{LIST_TREE} | while read -r f; do "
                        "printf '%s %s %s\\n' \"$f\" \"$([ -O \"$f\" ] && echo O || echo -)\" "
                        "\"$([ -G \"$f\" ] && echo G || echo -)\"; done"),
    Idiom("tar (GNU)", "tar --sort=name -cf out/gnu.tar tree && tar -tvf out/gnu.tar"),
    Idiom("tar --numeric-owner", "tar --sort=name --numeric-owner -cf out/num.tar tree && "
                                 "tar --numeric-owner -tvf out/num.tar"),
    Idiom("bsdtar", f"{LIST_TREE} | bsdtar -cnf out/bsd.tar -T - && bsdtar -tvf out/bsd.tar && "
                    "bsdtar -tvnf out/bsd.tar --numeric-owner", needs=("bsdtar",)),
    Idiom("cpio -H newc", f"{LIST_TREE} | cpio --quiet -o -H newc > out/a.cpio && "
                          "cpio --quiet -itv < out/a.cpio && "
                          "cpio --quiet -itv --numeric-uid-gid < out/a.cpio", needs=("cpio",)),
    Idiom("python tarfile", "python3 -c 'import tarfile\n"
                            "with tarfile.open(\"out/py.tar\", \"w\") as t: t.add(\"tree\")\n"
                            "for m in tarfile.open(\"out/py.tar\"):\n"
                            "    print(m.name, m.uid, m.gid, m.uname, m.gname, oct(m.mode), "
                            "m.type, m.linkname)'", needs=("python3",)),
    Idiom("ar U", "ar rcU out/lib.a tree/etc/conf tree/usr/bin/prog && ar tv out/lib.a",
          needs=("ar",)),
    Idiom("dpkg-deb --build", "dpkg-deb --build pkg out/parity.deb >/dev/null && "
                              "dpkg-deb -c out/parity.deb", needs=("dpkg-deb",)),
    Idiom("mksquashfs", "mksquashfs tree out/s.sqfs -no-progress -quiet -processors 1 && "
                        "unsquashfs -lln out/s.sqfs && unsquashfs -ll out/s.sqfs",
          needs=("mksquashfs", "unsquashfs")),
    Idiom("mkfs.ext4 -d", "truncate -s 8M out/e.img && mkfs.ext4 -q -d tree out/e.img && "
                          "for d in / /etc /usr /usr/bin /var/lib/shared /empty; do "
                          "echo \"$d:\"; debugfs -R \"ls -p $d\" out/e.img 2>/dev/null | "
                          "cut -d/ -f3-; done", needs=("mkfs.ext4", "debugfs")),
    Idiom("genext2fs -d", "genext2fs -f -b 2048 -d tree out/g.img && "
                          "for d in / /etc /usr/bin /var/lib/shared; do echo \"$d:\"; "
                          "debugfs -R \"ls -p $d\" out/g.img 2>/dev/null | cut -d/ -f3-; done",
          needs=("genext2fs", "debugfs")),
    Idiom("mkfs.erofs", "mkfs.erofs --quiet out/e.erofs tree >/dev/null && for p in / /etc/conf "
                        "/etc/secret /usr/bin/suid /usr/bin/lnk /var/lib/shared /empty; do "
                        "dump.erofs --path=$p out/e.erofs | grep -E '^(File|Uid)'; done",
          needs=("mkfs.erofs", "dump.erofs")),
    Idiom("xorriso -R", "xorriso -as mkisofs -quiet -R -o out/x.iso tree 2>/dev/null && "
                        "xorriso -indev out/x.iso -find / -exec lsdl 2>/dev/null",
          needs=("xorriso",)),
    Idiom("genisoimage -R", "genisoimage -quiet -R -o out/g.iso tree && isoinfo -R -l -i out/g.iso",
          needs=("genisoimage", "isoinfo"), normalize=_drop_iso_extents),
    Idiom("cp -a", "cp -a tree out/cp && cd out && find cp | sort | xargs stat -c '%n %u %g %A %h'"),
    Idiom("rsync -a", "rsync -a tree out/rs && cd out && find rs | sort | "
                      "xargs stat -c '%n %u %g %A %h'", needs=("rsync",)),
    Idiom("install -o", "install -o root -g root -m 4755 tree/usr/bin/prog out/i-suid && "
                        "install -m 644 tree/etc/conf out/i-plain && "
                        "install -o nobody -g nogroup -m 640 tree/etc/conf out/i-nobody && "
                        "install -d -o 123 -g 456 out/i-dir && "
                        "stat -c '%n %u %g %U %G %A' out/i-*"),
    Idiom("tar -x foreign owners", "mkdir out/fx && tar -xf foreign.tar -C out/fx && "
                                   "find out/fx | sort | xargs stat -c '%n %u %g %A'"),
    Idiom("chown to your own uid number", "touch out/mine && cp tree/etc/secret out/secret && "
                                          "chown \"$HOST_UID:$HOST_GID\" out/mine out/secret && "
                                          "stat -c '%n %u %g' out/mine out/secret | "
                                          "sed \"s/ $HOST_UID / ME /; s/ $HOST_GID$/ MYGID/\""),
    Idiom("new files", "touch out/new && mkdir out/newdir && ln -s new out/newlink && "
                       "stat -c '%n %u %g %U %G %F' out/new out/newdir out/newlink"),
    Idiom("setuid file", "stat -c '%n %A %U %G' tree/usr/bin/suid && "
                         "[ -u tree/usr/bin/suid ] && echo setuid-bit && "
                         "[ -O tree/usr/bin/suid ] && echo owned"),
    Idiom("other owners (host root)", "stat -c '%n %u %g %U %G %A' /etc/passwd /usr/bin/passwd / "
                                        "&& find /etc/passwd -user root"),
    Idiom("hard links", "stat -c '%n %h %u %g' tree/etc/conf tree/etc/hard && "
                        "[ tree/etc/conf -ef tree/etc/hard ] && echo same-file"),
    Idiom("symlinks", "stat -c '%n %u %g %U %G %F %N' tree/usr/bin/lnk && "
                      "stat -L -c '%n %u %g %A' tree/usr/bin/lnk && "
                      "find tree -type l -user root && readlink tree/usr/bin/lnk"),
    # acl/file carries an ACL on the host (user nobody: r-x) when setfacl is installed.
    Idiom("ACL", "stat -c '%n %u %g %A' acl/file && ls -l acl/file | cut -c1-11 && "
                 "getfacl -cn acl/file", needs=("getfacl",)),
    # From here on tree/ itself changes (same steps under both tools).
    Idiom("chown one file, then tar", "chown 4321:8765 tree/etc/secret && "
                                      "chown nobody tree/usr/bin/prog && "
                                      "tar --sort=name -cf out/ch.tar tree && "
                                      "tar --numeric-owner -tvf out/ch.tar && tar -tvf out/ch.tar"),
    Idiom("chown a hard-linked file, then tar", "chown 0:0 tree/etc/conf && "
                                                "stat -c '%n %h %u %g' tree/etc/conf tree/etc/hard && "
                                                "tar --sort=name -cf out/hl.tar tree/etc && "
                                                "tar -tvf out/hl.tar"),
    Idiom("chmod, then stat", "chmod 0751 tree/etc/conf && chmod g+s tree/usr/bin/prog && "
                              "stat -c '%n %u %g %A' tree/etc/conf tree/usr/bin/prog"),
]

# fakeroot lies here (LD_PRELOAD reaches neither a static binary nor the
# kernel): checked separately, umlroot's answer must be the real one.
DIFFERENT = [
    # After every idiom above: it adds entries (with the time of now) to tree/.
    Idiom("setgid directory", "mkdir tree/var/lib/shared/sub && touch tree/var/lib/shared/f && "
                              "stat -c '%n %u %g %A' tree/var/lib/shared "
                              "tree/var/lib/shared/sub tree/var/lib/shared/f"),
    Idiom("another user's file", "[ -n \"$OTHER_OWNED\" ] || { echo 'skip: no file of another "
                                 "user here'; exit 0; }; stat -c '%u %g' \"$OTHER_OWNED\""),
    Idiom("your file, a group not yours", "[ -d grp ] || { echo 'skip: you have no supplementary "
                                          "group'; exit 0; }; mkdir grp/sgid/sub && "
                                          "touch grp/sgid/f && find grp | sort | "
                                          "xargs stat -c '%n %u %g %A'"),
    Idiom("static binary", "./static-stat tree/etc/conf tree && stat -c '%n %u %g' tree/etc/conf"),
    Idiom("mknod, then read", "mknod out/zero c 1 5 && stat -c '%n %F %t:%T' out/zero && "
                              "head -c 4 out/zero | od -An -tx1 && echo read-done"),
    Idiom("chown -R root:root", "chown -R root:root tree && "
                                "stat -c '%n %A' tree/usr/bin/suid tree/usr/bin/prog tree/var/lib/shared"),
]


def script(idioms: list[Idiom]) -> str:
    lines = ['export PATH="$PATH:/usr/sbin:/sbin"', "mkdir -p out"]
    for idiom in idioms:
        missing = " ".join(idiom.needs)
        guard = (f"for t in {missing}; do command -v $t >/dev/null || "
                 "{ echo \"skip: $t is not installed\"; exit 0; }; done; ") if missing else ""
        lines += [f"echo {shlex.quote('### ' + idiom.name)}", f"( {guard}{idiom.body} )", 'echo "### exit $?"']
    return "\n".join(lines) + "\n"


def sections(output: str) -> dict[str, str]:
    found: dict[str, str] = {}
    name = None
    for line in output.splitlines(keepends=True):
        if line.startswith("### ") and not line.startswith("### exit "):
            name = line[4:].rstrip("\n")
            found[name] = ""
        elif name is not None:
            found[name] += line
    return found


@dataclass(frozen=True)
class Outputs:
    top: Path
    fake: dict[str, str]
    uml: dict[str, str]
    fake_stderr: str
    uml_stderr: str


def workspace(top: Path, name: str, static_stat: Path | None) -> Path:
    """An identical copy of the tree, made as the invoking user (cp -a keeps
    the whole-second mtimes)."""
    work = top / name
    work.mkdir()
    for entry in ("tree", "pkg", "foreign.tar", "acl", *(["grp"] if OTHER_GID is not None else [])):
        subprocess.run(["cp", "-a", str(top / "orig" / entry), str(work)], check=True)
    if static_stat is not None:
        shutil.copy2(static_stat, work / "static-stat")
    return work


def compile_static(top: Path) -> Path | None:
    source = top / "static-stat.c"
    source.write_text(STATIC_STAT_C)
    binary = top / "static-stat"
    built = subprocess.run(["gcc", "-static", "-O", "-o", str(binary), str(source)],
                           capture_output=True, check=False)
    return binary if built.returncode == 0 else None


@pytest.fixture(scope="module")
def parity(tmp_path_factory: pytest.TempPathFactory) -> Outputs:
    top = tmp_path_factory.mktemp("parity")
    make_tree(top / "orig")
    static_stat = compile_static(top)
    text = script(IDIOMS + DIFFERENT)
    fake_ws = workspace(top, "fake", static_stat)
    uml_ws = workspace(top, "uml", static_stat)
    fake = subprocess.run(["fakeroot", "--", "bash", "-c", text], cwd=fake_ws, env=ENV,
                          capture_output=True, timeout=300, check=False)
    uml = run_umlroot(["fakeroot", "--", "bash", "-c", text], cwd=uml_ws, env=ENV, timeout=300)
    assert fake.returncode == 0, fake.stderr.decode(errors="replace")
    assert uml.returncode == 0, uml.stderr.decode(errors="replace")
    return Outputs(top, sections(fake.stdout.decode(errors="replace")),
                   sections(uml.stdout.decode(errors="replace")),
                   fake.stderr.decode(errors="replace"), uml.stderr.decode(errors="replace"))


# Known differences that are umlroot's to fix (strict: the test fails once fixed).
KNOWN_BUGS = {
    "chown a hard-linked file, then tar": (
        "overlayfs runs without index (hostfs has no file handles), so copying a host file up "
        "(any chown, even to the owner it has) breaks its hard links: the archive stores the "
        "data twice and stat shows 1 link for one name, 2 for the other"),
}


def idiom_params(idioms: list[Idiom]) -> list[object]:
    return [pytest.param(idiom, id=idiom.name,
                         marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[idiom.name])]
                         if idiom.name in KNOWN_BUGS else [])
            for idiom in idioms]


@pytest.mark.parametrize("idiom", idiom_params(IDIOMS))
def test_idiom_sees_the_same_as_fakeroot(parity: Outputs, idiom: Idiom) -> None:
    fake, uml = parity.fake[idiom.name], parity.uml[idiom.name]
    if fake.startswith("skip: "):
        pytest.skip(fake.strip())
    if idiom.normalize is not None:
        fake, uml = idiom.normalize(fake), idiom.normalize(uml)
    assert fake.endswith("### exit 0\n"), parity.fake_stderr
    assert uml == fake, f"umlroot's stderr:\n{parity.uml_stderr}"


def test_the_tree_looks_roots(parity: Outputs) -> None:
    """Not only equal: what both show is root's (a wrong fakeroot would
    make the comparison pass too)."""
    stat = parity.uml["stat -c"].splitlines()[:-1]
    assert len(stat) == 15
    assert all(" 0 0 root root " in line for line in stat), stat
    deb = parity.uml["dpkg-deb --build"]
    assert deb.count("root/root") == len(deb.splitlines()) - 1


def test_static_binary_sees_the_real_kernel(parity: Outputs) -> None:
    """fakeroot is LD_PRELOAD: a static binary sees your real uid and the
    real owners, while the dynamic `stat` in the same shell says root.
    umlroot has one answer for both, and it is root's."""
    if parity.fake["static binary"].startswith("skip: ") or "uid " not in parity.uml["static binary"]:
        pytest.skip("no static binary (gcc -static failed)")
    me, my_gid = os.getuid(), os.getgid()
    assert parity.fake["static binary"] == (
        f"uid {me}\ntree/etc/conf {me} {my_gid}\ntree {me} {my_gid}\n"
        "tree/etc/conf 0 0\n### exit 0\n")
    assert parity.uml["static binary"] == (
        "uid 0\ntree/etc/conf 0 0\ntree 0 0\ntree/etc/conf 0 0\n### exit 0\n")


def test_mknod_makes_a_real_device(parity: Outputs) -> None:
    """fakeroot's mknod makes an empty file and remembers a device: stat
    says 'character special', a read gives nothing. umlroot's is /dev/zero."""
    assert parity.fake["mknod, then read"] == (
        "out/zero character special file 1:5\nread-done\n### exit 0\n")
    assert parity.uml["mknod, then read"] == (
        "out/zero character special file 1:5\n 00 00 00 00\nread-done\n### exit 0\n")


def test_setgid_directory_is_inherited_for_real(parity: Outputs) -> None:
    """A directory made in a setgid directory inherits the bit and the
    group (the kernel's rule; the group is yours, so 0 inside). fakeroot
    records the mode that mkdir asked for and shows no setgid bit."""
    common = "tree/var/lib/shared 0 0 drwxrwsr-x\n"
    made = "tree/var/lib/shared/f 0 0 -rw-r--r--\n### exit 0\n"
    assert parity.fake["setgid directory"] == (
        common + "tree/var/lib/shared/sub 0 0 drwxr-xr-x\n" + made)
    assert parity.uml["setgid directory"] == (
        common + "tree/var/lib/shared/sub 0 0 drwxr-sr-x\n" + made)


def test_another_users_file_keeps_its_owner(parity: Outputs) -> None:
    """A file of a user who is neither root nor you: fakeroot says root's (it
    shows every file it has not seen changed as root's); a real kernel shows
    its owner, and umlroot does."""
    if parity.fake["another user's file"].startswith("skip: "):
        pytest.skip(parity.fake["another user's file"].strip())
    real = os.lstat(ENV["OTHER_OWNED"])
    assert parity.fake["another user's file"] == "0 0\n### exit 0\n"
    assert parity.uml["another user's file"] == f"{real.st_uid} {real.st_gid}\n### exit 0\n"


def test_your_file_with_a_group_not_yours(parity: Outputs) -> None:
    """Decided: only your uid and your own gid become 0. A file of yours whose
    group is a supplementary group of yours shows uid 0 and that group (the
    kernel's answer, which writeback can keep); a setgid directory of that
    group passes it (and, for directories, the bit) on. fakeroot shows 0:0
    for all, and no inherited setgid bit."""
    if OTHER_GID is None:
        pytest.skip("you have no supplementary group (CI adds one)")
    g = OTHER_GID
    assert parity.fake["your file, a group not yours"] == (
        "grp 0 0 drwxr-xr-x\ngrp/file 0 0 -rw-r--r--\ngrp/sgid 0 0 drwxrwsr-x\n"
        "grp/sgid/f 0 0 -rw-r--r--\ngrp/sgid/sub 0 0 drwxr-xr-x\n### exit 0\n")
    assert parity.uml["your file, a group not yours"] == (
        f"grp 0 0 drwxr-xr-x\ngrp/file 0 {g} -rw-r--r--\ngrp/sgid 0 {g} drwxrwsr-x\n"
        f"grp/sgid/f 0 {g} -rw-r--r--\ngrp/sgid/sub 0 {g} drwxr-sr-x\n### exit 0\n")


def test_acl_entries_are_not_seen_by_either(parity: Outputs) -> None:
    """Decided (and what fakeroot does): a host file's ACL entries are not
    seen. fakeroot answers the xattr calls from its own records, which know
    nothing of the host's ACL; umlroot's hostfs carries no extended
    attributes. Both show the mode's ACL, the mask as the group bits, and
    `ls -l` no `+`. Packages carry no ACLs (dpkg-deb stores none; tar only
    with --acls); an ACL set inside is the guest's own (kept in --state and
    in images, not written back)."""
    host = subprocess.run(["getfacl", "-cn", str(parity.top / "orig/acl/file")],
                          capture_output=True, text=True, check=False)
    if "user:65534:r-x" not in host.stdout:
        pytest.skip("no ACL on the host's file (setfacl missing, or the file system has none)")
    assert parity.fake["ACL"] == parity.uml["ACL"] == (
        "acl/file 0 0 -rw-r-xr--\n-rw-r-xr-- \nuser::rw-\ngroup::r-x\nother::r--\n\n### exit 0\n")


# ---- the real view: fakeroot -u, umlroot run --real-owners -------------------------------

SHOW = ("touch made && mkdir madedir && "
        "stat -c '%n %u %g' tree tree/etc/conf made madedir /etc/passwd && id -u")


@pytest.fixture
def small_tree(tmp_path: Path) -> Path:
    make_tree(tmp_path / "orig")
    return tmp_path


def real_view(top: Path, name: str, argv: list[str]) -> str:
    work = workspace(top, name, None)
    done = subprocess.run([*argv, "sh", "-c", SHOW], cwd=work, env=ENV, capture_output=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.decode()


def test_real_owners_view_is_fakeroots_minus_u(small_tree: Path) -> None:
    """fakeroot -u shows files it has not seen changed with their real owner;
    so do `umlroot fakeroot -u` and `umlroot run --real-owners`. What is made
    inside is root's under umlroot (the kernel's creator). fakeroot -u agrees
    for mkdir, but not for a file made by open(), which it does not wrap: that
    file is one it has not seen, so it shows your uid (fakeroot's lie)."""
    host_files = f"tree {ME} {MY_GID}\ntree/etc/conf {ME} {MY_GID}\n"
    assert real_view(small_tree, "fake", ["fakeroot", "-u", "--"]) == (
        host_files + f"made {ME} {MY_GID}\nmadedir 0 0\n/etc/passwd 0 0\n0\n")
    expected = host_files + "made 0 0\nmadedir 0 0\n/etc/passwd 0 0\n0\n"
    assert real_view(small_tree, "uml", [*UMLROOT, "fakeroot", "-u", "--"]) == expected
    assert real_view(small_tree, "run", [*UMLROOT, "run", "--real-owners", "--"]) == expected


def test_run_maps_your_files_to_root_too(small_tree: Path) -> None:
    assert real_view(small_tree, "run", [*UMLROOT, "run", "--"]) == (
        "tree 0 0\ntree/etc/conf 0 0\nmade 0 0\nmadedir 0 0\n/etc/passwd 0 0\n0\n")


def test_api_real_owners_keyword(small_tree: Path) -> None:
    import umlroot

    work = workspace(small_tree, "api", None)
    shown: dict[bool, bytes] = {}
    for real_owners in (False, True):
        result = umlroot.run(["stat", "-c", "%u %g", "tree/etc/conf"], cwd=work,
                             capture_output=True, real_owners=real_owners)
        assert result.returncode == 0, result.stderr
        shown[real_owners] = result.stdout
    assert shown == {False: b"0 0\n", True: f"{ME} {MY_GID}\n".encode()}


# ---- fakeroot -s / -i -----------------------------------------------------------------------

FIRST = "chown 12:34 tree/etc/conf && touch tree/made && mknod tree/null c 1 3"
AGAIN = "stat -c '%n %u %g %F' tree tree/etc/conf tree/etc/secret tree/made tree/null"


def test_save_and_load_round_trip_as_fakeroot(small_tree: Path) -> None:
    """`-s F` then `-i F`: a chown, a new file and a device node from the
    first run, and the untouched files made outside, look the same to the
    second run under both tools."""
    shown: dict[str, str] = {}
    for name, tool in (("fake", ["fakeroot"]), ("uml", [*UMLROOT, "fakeroot"])):
        work = workspace(small_tree, name, None)
        state = work / "state"
        first = subprocess.run([*tool, "-s", str(state), "--", "sh", "-c", FIRST], cwd=work,
                               env=ENV, capture_output=True, timeout=120, check=False)
        assert first.returncode == 0, first.stderr.decode(errors="replace")
        again = subprocess.run([*tool, "-i", str(state), "--", "sh", "-c", AGAIN], cwd=work,
                               env=ENV, capture_output=True, timeout=120, check=False)
        assert again.returncode == 0, again.stderr.decode(errors="replace")
        shown[name] = again.stdout.decode()
    assert shown["uml"] == shown["fake"]
    assert shown["fake"] == ("tree 0 0 directory\ntree/etc/conf 12 34 regular file\n"
                             "tree/etc/secret 0 0 regular file\n"
                             "tree/made 0 0 regular empty file\n"
                             "tree/null 0 0 character special file\n")


def test_chown_clears_setuid_for_real(parity: Outputs) -> None:
    """Linux clears the setuid bit (and setgid, with group execute) of a file
    on chown, by root too; that is why dh_fixperms chowns first and setuid
    bits are set after it. fakeroot keeps the bits (it only records the new
    owner). A tree with setuid files made outside, then `chown -R root:root`:
    umlroot's answer is the kernel's, as under `unshare --map-root-user`.
    (setgid directories keep the bit.) Real packages notice: authbind's
    debian/rules sets u+s, then chowns (bench/deb_parity.py, docs/parity.md)."""
    assert parity.fake["chown -R root:root"] == (
        "tree/usr/bin/suid -rwsr-xr-x\ntree/usr/bin/prog -rwxr-sr-x\n"
        "tree/var/lib/shared drwxrwsr-x\n### exit 0\n")
    assert parity.uml["chown -R root:root"] == (
        "tree/usr/bin/suid -rwxr-xr-x\ntree/usr/bin/prog -rwxr-xr-x\n"
        "tree/var/lib/shared drwxrwsr-x\n### exit 0\n")


# ---- umlroot mkfs -------------------------------------------------------------------------


def ext4_listing(image: Path) -> str:
    """mode/uid/gid/name/size of every entry under the directories of the tree."""
    out = []
    for directory in ("/", "/etc", "/usr/bin", "/var/lib/shared", "/empty"):
        listed = subprocess.run(["/sbin/debugfs", "-R", f"ls -p {directory}", str(image)],
                                capture_output=True, text=True, check=True).stdout
        out += [f"{directory}: " + "/".join(line.split("/")[2:]) for line in listed.splitlines()
                if line and "lost+found" not in line]
    return "\n".join(out)


@pytest.mark.parametrize("options", [[], ["--all-root"]], ids=["default", "--all-root"])
def test_mkfs_of_your_tree_is_roots_as_under_fakeroot(small_tree: Path,
                                                       options: list[str]) -> None:
    """`umlroot mkfs ext4 DIR IMG` of a tree you made (by default and with
    --all-root) gives what `fakeroot mkfs.ext4 -d` gives: every entry
    root's, modes (setuid included) kept."""
    tree = small_tree / "orig" / "tree"
    fake_img, uml_img = small_tree / "fake.img", small_tree / "uml.img"
    subprocess.run(["truncate", "-s", "8M", str(fake_img)], check=True)
    made = subprocess.run(["fakeroot", "/sbin/mkfs.ext4", "-q", "-d", str(tree), str(fake_img)],
                          capture_output=True, check=False)
    assert made.returncode == 0, made.stderr.decode(errors="replace")
    result = run_umlroot(["mkfs", *options, "ext4", str(tree), str(uml_img)], cwd=small_tree)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert ext4_listing(uml_img) == ext4_listing(fake_img)
    assert "/0/0/conf/" in ext4_listing(uml_img)


def test_chown_to_your_uid_number_is_a_foreign_owner(tmp_path: Path) -> None:
    """Decided: inside, your host uid *number* is an owner like any other (only
    the host's view maps you to root). A file chowned to it shows that number,
    in the run and in a run loading the saved state, as under fakeroot; the
    host gets the file as yours (the summary counts the owner it cannot hold),
    so a fresh run shows it as root's, as a fresh fakeroot does."""
    make = f"touch f g && chown {ME}:{MY_GID} f && stat -c '%n %u %g' f g"
    show = "stat -c '%n %u %g' f g"
    seen: dict[str, list[str]] = {}
    for name, tool in (("fake", ["fakeroot"]), ("uml", [*UMLROOT, "fakeroot"])):
        work = tmp_path / name
        work.mkdir()
        runs = [["-s", "st", "--", "sh", "-c", make], ["-i", "st", "--", "sh", "-c", show],
                ["--", "sh", "-c", show]]
        seen[name] = []
        for args in runs:
            done = subprocess.run([*tool, *args], cwd=work, env=ENV, capture_output=True,
                                  timeout=120, check=False)
            assert done.returncode == 0, done.stderr.decode(errors="replace")
            seen[name].append(done.stdout.decode())
            if name == "uml" and args[0] == "-s":
                assert b"1 owner change" in done.stderr, done.stderr
        assert (os.stat(work / "f").st_uid, os.stat(work / "g").st_uid) == (ME, ME)
    mine = f"f {ME} {MY_GID}\ng 0 0\n"
    assert seen["uml"] == seen["fake"] == [mine, mine, "f 0 0\ng 0 0\n"]
