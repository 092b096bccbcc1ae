"""``nettrain bench CONFIG``: training and forward throughput (the library side is nettrain.bench)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..distributed.launch import is_parallel_launch
from .common import SET_HELP, rank_zero_result, run_or_exit, usage


def bench_command(
    config: Path = typer.Argument(..., help="the YAML config whose model to time"),
    batch_size: int = typer.Option(128, "--batch-size", min=1, help="images per step"),
    steps: int = typer.Option(10, "--steps", min=1, help="timed steps"),
    warmup: int = typer.Option(3, "--warmup", min=0, help="untimed steps first"),
    format: str = typer.Option("table", "--format", help="table or json"),
    use_fast: Optional[bool] = typer.Option(None, "--fast/--no-fast",
                                            help="compiled (numba) or NumPy kernels; default: numba when installed"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="worker threads (sets NETTRAIN_THREADS); default: one per core"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Training and forward throughput on random data, time per layer, peak memory."""
    from ..bench import benchmark
    from ..config import load_config

    if threads is not None:
        os.environ["NETTRAIN_THREADS"] = str(threads)

    def run():
        if format not in ("table", "json"):
            raise usage(f"--format must be table or json, got {format!r}")
        if is_parallel_launch():  # mpiexec -n N nettrain bench: the global batch split over the ranks
            from ..distributed import commands

            return rank_zero_result(*commands.bench(config, list(set_ or []), batch_size, steps, warmup, use_fast))
        cfg = load_config(config, list(set_ or []))
        return benchmark(cfg, batch_size=batch_size, steps=steps, warmup=warmup, use_fast=use_fast)

    result = run_or_exit(run)
    if format == "json":
        import json

        typer.echo(json.dumps(result, indent=2))
    else:
        print_bench(result)



def print_bench(result) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['config']}: time per layer (own time, per step)", title_justify="left")
    for column in ("layer", "type", "forward ms", "backward ms", "total ms", "share", "GFLOP/s f/b"):
        table.add_column(column, justify="left" if column in ("layer", "type") else "right",
                         min_width=max(len(row["name"]) for row in result["layers"]) if column == "layer" else None)
    rate = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    for row in result["layers"]:
        table.add_row(row["name"], row["type"], f"{row['forward_ms']:.2f}", f"{row['backward_ms']:.2f}",
                      f"{row['total_ms']:.2f}", f"{100 * row['share']:.1f}%",
                      f"{rate(row.get('forward_gflops'))}/{rate(row.get('backward_gflops'))}")
    Console().print(table)
    rss = "-" if result["peak_rss_mib"] is None else f"{result['peak_rss_mib']:.0f}"
    traced = "-" if result["peak_traced_mib"] is None else f"{result['peak_traced_mib']:.1f}"
    if result.get("peak_rss_mib_all_ranks") is not None:
        rss += f" per rank at most, {result['peak_rss_mib_all_ranks']:.0f} for all ranks"
    layout = result.get("layout") or f"threads: {result['threads']}"  # ranks x threads under mpiexec
    peak_on = result.get("sgemm_peak_on") or f"{result['threads']} threads"
    for line in (
        f"kernels: {result['kernels']}, {layout} (BLAS {result['blas_threads']}"
        f"{', freed memory kept' if result.get('keeps_freed_memory') else ''}), batch {result['batch_size']}, "
        f"{_count(result['steps'], 'timed step')} after {_count(result['warmup'], 'warm-up step')}",
        f"train: {result['train_img_per_s']:,.1f} img/s ({result['train_step_ms']:.1f} ms/step)",
        f"forward (eval): {result['forward_img_per_s']:,.1f} img/s ({result['forward_ms']:.1f} ms/batch)",
        f"peak memory (MiB): RSS {rss}, NumPy arrays {traced}, summarize's estimate {result['estimated_mib']:.1f}"
        + ("" if result.get("page_faults_per_step") is None
           else f"; {_count(round(result['page_faults_per_step']), 'page fault')} per training step"),
        f"compute: {result['train_gflops']:.1f} GFLOP/s in training, {result['forward_gflops']:.1f} in the forward "
        f"pass; {100 * result['peak_fraction']:.0f}% of this machine's sgemm peak "
        f"({result['sgemm_peak_gflops']:.0f} GFLOP/s on {peak_on})",
    ):
        typer.echo(line)


def _count(n: int, noun: str) -> str:
    """``1 timed step``, ``0 warm-up steps``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"



def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
