"""`umlroot mkfs TYPE SOURCE OUTPUT`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from umlroot.mkfs import make_image
from umlroot.mkfs_options import FsType, MkfsOptions, Partitioning, SizeSpec, parse_size


def _size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> SizeSpec | None:
    return None if value is None else parse_size(value)


@click.command("mkfs", epilog="Exit status: 0 when OUTPUT was written; 125 when umlroot or a "
                              "tool failed (OUTPUT is then left as it was).")
@click.argument("fstype", metavar="TYPE", type=click.Choice([t.value for t in FsType]))
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--size", callback=_size, metavar="SIZE|+EXTRA",
              help="OUTPUT's size (512M, 2G), or room on top of what the content needs (+1G). "
                   "Default: computed from the content. Not for squashfs, erofs, iso9660.")
@click.option("--label", metavar="LABEL", help="The filesystem's label (ISO: volume id).")
@click.option("--all-root", is_flag=True,
              help="A directory's files all belong to 0:0 in the image "
                   "(a tarball: its members are extracted as root's).")
@click.option("--real-owners", is_flag=True,
              help="A directory's files keep their host owners (yours too). By default "
                   "your files are root's in the image, other owners' as they are.")
@click.option("--state", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              metavar="FILE",
              help="A directory's owners, modes, device nodes and xattrs as this `umlroot run "
                   "--state` file shows them.")
@click.option("--partition", type=click.Choice([p.value for p in Partitioning]),
              default=Partitioning.NONE.value, show_default=True,
              help="gpt: OUTPUT is a GPT disk with one partition holding the filesystem.")
@click.option("--luks", "luks_key", type=click.Path(dir_okay=False, path_type=Path),
              metavar="KEYFILE",
              help="Encrypt with LUKS2; KEYFILE (its whole content) unlocks it. "
                   "ext4, btrfs, xfs, vfat.")
@click.option("--verity", is_flag=True,
              help="Add a dm-verity hash tree (OUTPUT.verity; OUTPUT.roothash) and print the "
                   "root hash. squashfs, erofs.")
@click.option("-v", "--verbose", is_flag=True, help="Show each guest step and its output.")
def mkfs_command(fstype: str, source: Path, output: Path, size: SizeSpec | None,
                 label: str | None, all_root: bool, real_owners: bool, state: Path | None,
                 partition: str,
                 luks_key: Path | None, verity: bool, verbose: bool) -> None:
    """Make a TYPE filesystem image OUTPUT holding SOURCE (a directory or a
    tarball), with owners, modes, device nodes and xattrs: ext4, btrfs, xfs,
    vfat, squashfs, erofs or iso9660.

    A directory's owners are as the guest sees the host (your files root's,
    others' as they are), or the host's with --real-owners, or 0:0 with
    --all-root, or what a --state file says; a tarball's are its members'.
    See docs/images.md.
    """
    options = MkfsOptions(fstype=FsType(fstype), source=source, output=output, size=size,
                          label=label, all_root=all_root, real_owners=real_owners,
                          state=state,
                          partition=Partitioning(partition), luks_key=luks_key, verity=verity,
                          verbose=verbose)
    sys.exit(make_image(options))
