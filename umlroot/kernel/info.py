"""`umlroot kernel info`: the chosen kernel, why, and optionally how fast it boots."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from umlroot.errors import UmlrootError
from umlroot.kernel import probe
from umlroot.kernel.select import find_kernel


@dataclasses.dataclass(frozen=True)
class InfoOptions:
    kernel: Path | None = None
    probe: bool = False
    bench_runs: int | None = None
    cpus: int = 1
    preset_lpj: bool = True


def show_info(options: InfoOptions) -> None:
    choice = find_kernel(options.kernel)
    click.echo(f"kernel:  {choice.path}")
    click.echo(f"version: {choice.version or 'unknown'}")
    click.echo(f"origin:  {choice.origin.value}")
    click.echo(f"why:     {choice.reason}")
    click.echo(f"smp:     {'yes' if choice.smp else 'no'}")
    click.echo(f"args:    {' '.join(choice.boot_args) or '(none recorded)'}")
    patches = "unknown" if choice.patches is None else " ".join(choice.patches) or "none"
    click.echo(f"patches: {patches}")
    if options.cpus > 1 and not choice.smp:
        raise UmlrootError(f"--cpus {options.cpus}: this kernel has no SMP")
    lpj = probe.preset_lpj(choice.path) if options.preset_lpj else None
    settings = probe.ProbeSettings(seccomp=True, cpus=options.cpus, lpj=lpj)
    if options.probe:
        result = probe.probe(choice.path, settings, use_cache=False)
        click.echo(f"probe:   {result.explain()}")
    if options.bench_runs:
        bench = probe.boot_bench(choice.path, options.bench_runs, settings)
        click.echo(f"bench:   {bench.summary()}" + (f", lpj={lpj}" if lpj else ", calibrating"))
