#!/usr/bin/env python3
"""What a tree holds, as comparable records: one line per path with its
type, permission bits, owner, content digest (sha256), link target, device
numbers and user.* xattrs. The tests make one of a tarball on the host
(`from_tarball`) and one of a mounted image inside a fresh guest
(`python3 mkfs_manifest.py DIR`, JSON on stdout), and compare them."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import tarfile

# mkfs.ext4 and xfs make these themselves.
IGNORED = {"lost+found"}


def _record(kind: str, mode: int, uid: int, gid: int, extra: str, xattrs: dict[str, str]) -> str:
    attrs = ",".join(f"{k}={v}" for k, v in sorted(xattrs.items()))
    return f"{kind} {mode & 0o7777:04o} {uid}:{gid} {extra} [{attrs}]"


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _xattrs(path: str) -> dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {name: os.getxattr(path, name, follow_symlinks=False).decode(errors="replace")
            for name in names if name.startswith("user.")}


def from_directory(top: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for parent, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if not (parent == top and d in IGNORED)]
        for name in ["", *dirs, *files]:
            if name == "" and parent != top:
                continue
            path = os.path.join(parent, name) if name else parent
            rel = os.path.relpath(path, top)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                kind, extra = "f", _digest(path)
            elif stat.S_ISDIR(st.st_mode):
                kind, extra = "d", ""
            elif stat.S_ISLNK(st.st_mode):
                kind, extra = "l", os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                kind = "c" if stat.S_ISCHR(st.st_mode) else "b"
                extra = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
            else:
                kind, extra = "p", ""
            found[rel] = _record(kind, st.st_mode, st.st_uid, st.st_gid, extra, _xattrs(path))
    return found


def from_tarball(path: str) -> dict[str, str]:
    found: dict[str, str] = {}
    with tarfile.open(path) as archive:
        for member in archive:
            rel = os.path.normpath(member.name)
            xattrs = {key[len("SCHILY.xattr."):]: value
                      for key, value in member.pax_headers.items()
                      if key.startswith("SCHILY.xattr.user.")}
            if member.isfile():
                data = archive.extractfile(member)
                assert data is not None
                kind, extra = "f", hashlib.sha256(data.read()).hexdigest()
            elif member.isdir():
                kind, extra = "d", ""
            elif member.issym():
                kind, extra = "l", member.linkname
            elif member.ischr() or member.isblk():
                kind = "c" if member.ischr() else "b"
                extra = f"{member.devmajor},{member.devminor}"
            else:
                kind, extra = "p", ""
            found[rel] = _record(kind, member.mode, member.uid, member.gid, extra, xattrs)
    return found


if __name__ == "__main__":
    json.dump(from_directory(sys.argv[1]), sys.stdout, indent=0, sort_keys=True)
