"""`umlroot kernel build|info|path` and `umlroot doctor`: options in, module call out."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import click

from umlroot.errors import ExitCode


@click.group("kernel")
def kernel_group() -> None:
    """Build, locate and inspect umlroot's UML kernel."""


@kernel_group.command("build")
@click.option("--source", "source", metavar="PATH|URL",
              help="Kernel source: an unpacked tree, a .tar.xz/.tar.gz/.tar.zst, or the "
                   "URL of one (needs --sha256).")
@click.option("--sha256", metavar="HEX",
              help="The SHA-256 the --source tarball (URL or file) must have.")
@click.option("--suite", help="Debian suite to download linux-source from "
              "[default: trixie-backports, then sid].")
@click.option("--mirror", metavar="URI",
              help="Debian mirror URI [default: the one in this machine's APT sources].")
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Parallel compile jobs "
              "[default: number of CPUs].")
@click.option("--force", is_flag=True, help="Rebuild even if the cache has this kernel.")
@click.option("--keep-tree", is_flag=True, help="Keep the build tree (in the cache's build/).")
def build_command(source: str | None, sha256: str | None, suite: str | None,
                  mirror: str | None, jobs: int | None, force: bool, keep_tree: bool) -> None:
    """Build umlroot's kernel from source (once, about 10 minutes) and cache it."""
    from umlroot.kernel import download
    from umlroot.kernel.build import BuildOptions, build_kernel

    url = source if source is not None and download.is_url(source) else None
    options = BuildOptions(source=Path(source) if source is not None and url is None else None,
                           url=url, sha256=download.check_sha256(sha256) if sha256 else None,
                           mirror=mirror, jobs=jobs or 0, force=force, keep_tree=keep_tree)
    if suite:
        options = dataclasses.replace(options, suites=(suite,))
    # SIGTERM (a CI job cancelled, `kill`) unwinds like Ctrl-C: the compile
    # jobs are stopped and the build tree removed.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        build_kernel(options)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(ExitCode.SIGNAL_BASE + signum)


@kernel_group.command("path")
@click.option("--kernel", type=click.Path(path_type=Path), help="As `umlroot run --kernel`.")
def path_command(kernel: Path | None) -> None:
    """Print the path of the kernel `umlroot run` would use."""
    from umlroot.kernel.select import find_kernel

    click.echo(find_kernel(kernel).path)


@kernel_group.command("info")
@click.option("--kernel", type=click.Path(path_type=Path), help="As `umlroot run --kernel`.")
@click.option("--probe", is_flag=True, help="Also boot it once and report the time to init.")
@click.option("--boot-bench", type=click.IntRange(min=1), metavar="N",
              help="Boot it N times to init=/bin/true and report the median time to init.")
@click.option("--cpus", type=click.IntRange(min=1, max=8), default=1, show_default=True,
              help="Guest CPUs for --probe/--boot-bench (more than 1 needs SMP).")
@click.option("--no-lpj", is_flag=True,
              help="--boot-bench without the recorded lpj= (measures delay calibration).")
def info_command(kernel: Path | None, probe: bool, boot_bench: int | None, cpus: int,
                 no_lpj: bool) -> None:
    """Show which kernel `umlroot run` will use, and why."""
    from umlroot.kernel.info import InfoOptions, show_info

    show_info(InfoOptions(kernel=kernel, probe=probe, bench_runs=boot_bench, cpus=cpus,
                          preset_lpj=not no_lpj))


@kernel_group.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--kernel", type=click.Path(path_type=Path),
              help="A cached kernel to export [default: the one `umlroot run` uses].")
def export_command(file: Path, kernel: Path | None) -> None:
    """Write the kernel and the prebuilt guest init to FILE (for a CI cache or another machine)."""
    from umlroot.kernel.archive import export_kernel

    export_kernel(file, kernel)


@kernel_group.command("wheel")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--kernel", type=click.Path(path_type=Path),
              help="A cached kernel to pack [default: the one `umlroot run` uses].")
@click.option("--build", "build", type=click.IntRange(min=0), metavar="N",
              help="A build number: the wheel's version becomes <kernel version>.N.")
def wheel_command(directory: Path, kernel: Path | None, build: int | None) -> None:
    """Write the kernel and the prebuilt guest init as a platform wheel into DIRECTORY
    (`pip install` it: umlroot then needs no kernel build and no C compiler)."""
    from umlroot.kernel.wheel import make_wheel

    click.echo(make_wheel(directory, kernel, build).path)


@kernel_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--require-current", is_flag=True,
              help="Fail (exit 1, nothing installed) unless FILE holds what this umlroot "
                   "would build: same kernel build id, same guest init.")
def import_command(file: Path, require_current: bool) -> None:
    """Install a kernel from FILE (made by `umlroot kernel export`), after checking it boots."""
    from umlroot.kernel.archive import import_kernel

    import_kernel(file, require_current)


@click.command("doctor")
def doctor_command() -> None:
    """Check that this machine can run `umlroot run`; one line per check."""
    from umlroot.doctor import run_doctor

    ok = run_doctor()
    raise SystemExit(ExitCode.OK if ok else ExitCode.FAILED)
