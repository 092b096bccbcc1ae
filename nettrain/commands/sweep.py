"""``nettrain sweep SPEC``: hyper-parameter search on Ray Tune (the library side is nettrain.sweep)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import fail, run_or_exit, usage


def sweep(
    spec: Optional[Path] = typer.Argument(None, help="the sweep spec (YAML), e.g. configs/sweeps/quickstart_lr.yaml"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override a value of the spec, e.g. --set trials=4 "
                                             "--set 'space.train.optimizer.lr={choice: [0.01, 0.001]}'"),
    address: Optional[str] = typer.Option(None, "--address", help="a running Ray cluster (ray://head:10001 or "
                                          "head:6379); default: a Ray started on this machine"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the interrupted sweep in this folder"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no line per epoch"),
) -> None:
    """Search hyper-parameters with Ray Tune; every trial is a run folder in the sweep folder's trials/."""
    from ..sweep.console import ConsoleSweepProgress, print_sweep_end

    progress = ConsoleSweepProgress(quiet=quiet)

    def run():
        from ..sweep import require_ray
        from ..sweep.spec import load_spec, plan_sweep

        if (spec is None) == (resume is None):
            raise usage("give a sweep spec, or --resume SWEEP_FOLDER to continue one (not both)")
        if resume is not None and set_:
            raise usage("--set changes a spec; a resumed sweep keeps the spec in its sweep.yaml")
        plan = plan_sweep(load_spec(spec, list(set_ or []))) if spec is not None else None
        require_ray()
        from ..sweep.runner import resume_sweep, run_sweep

        return run_sweep(plan, progress, address) if plan is not None else resume_sweep(resume, progress, address)

    try:
        outcome = run_or_exit(run)
    except KeyboardInterrupt:  # a second Ctrl-C: run folders are written atomically; Tune keeps its last saved state
        folder = progress.folder or resume
        hint = f"; resume with: nettrain sweep --resume {folder}" if folder else ""
        typer.echo(f"aborted{hint}", err=True)
        raise typer.Exit(130) from None
    print_sweep_end(outcome, progress.console)
    if outcome.interrupted:
        typer.echo(f"interrupted; resume with: nettrain sweep --resume {outcome.folder}", err=True)
        raise typer.Exit(130)
    if outcome.best_yaml is None:
        first = next((r.error for r in outcome.records if r.error), None)
        fail(usage("no trial finished an epoch" + (f"; the first error: {first}" if first else "")))


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
