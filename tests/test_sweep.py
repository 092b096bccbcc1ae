"""`nettrain sweep`: the spec's errors (no Ray needed), then real sweeps on one shared local Ray.

The Ray tests run tiny configs on synthetic data with the NumPy kernels (a worker
then starts without loading compiled code), all on one Ray started once for the module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from nettrain.cli import app
from nettrain.config import load_config
from nettrain.errors import ConfigError
from nettrain.runs import read_metrics
from nettrain.sweep.spec import load_spec, plan_sweep
from tinyrun import tiny_config_dict, write_config

ROOT = Path(__file__).resolve().parent.parent
HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="the sweep extra (ray[tune]) is not installed")


def tiny_base(tmp_path: Path, **kwargs) -> Path:
    config = tiny_config_dict(dropout=False, augment=False, **kwargs)
    return write_config(tmp_path / "base.yaml", config)


def write_spec(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path, overrides=()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        plan_sweep(load_spec(path, overrides))
    return info.value.problems


# ============================================================================ the spec (no Ray)
def test_spec_errors_name_file_line_and_suggest(tmp_path):
    tiny_base(tmp_path)
    spec = write_spec(tmp_path, """\
base: base.yaml
space:
  train.optimizer.lr: {log_uniform: [1.0e-4, 1.0e-2]}
  train.batch_size: [16, 32]
  train.seed: {uniform: [3, 1]}
trails: 4
scheduler: {type: ash}
""")
    found = problems(spec)
    s = str(spec)
    assert f"{s}:3: space.train.optimizer.lr.log_uniform: unknown key 'log_uniform'; did you mean 'loguniform'?" in found
    assert any(p.startswith(f"{s}:4: space.train.batch_size: expected a domain like") for p in found)
    assert f"{s}:5: space.train.seed: uniform: the low end must be below the high end, got [3.0, 1.0]" in found
    assert f"{s}:6: trails: unknown key 'trails'; did you mean 'trials'?" in found
    assert f"{s}:7: scheduler.type: unknown scheduler type 'ash'; did you mean 'asha'?" in found
    assert [int(p.split(":")[1]) for p in found] == sorted(int(p.split(":")[1]) for p in found)


def test_paths_and_values_are_checked_against_the_base(tmp_path):
    tiny_base(tmp_path)
    spec = write_spec(tmp_path, """\
base: base.yaml
overrides: {train.epochs: 2}
space:
  model.layers[7].units: {choice: [8, 16]}
  train.batch_size: {grid: [16, 0]}
  train.optimzer.lr: {loguniform: [1.0e-4, 1.0e-2]}
""")
    found = problems(spec)
    s = str(spec)
    assert len(found) == 3, found
    assert found[0].startswith(f"{s}:4: space.model.layers[7].units: choice value 8: model.layers has 5 entries; "
                               "[7] is out of range (checked against ")
    assert found[1].startswith(f"{s}:5: space.train.batch_size: grid value 0: Input should be greater than 0")
    assert found[2].startswith(f"{s}:6: space.train.optimzer.lr: loguniform value 0.0001: train.optimzer does not "
                               "exist; did you mean 'optimizer'?")


def test_fixed_overrides_and_base_are_checked(tmp_path):
    spec = write_spec(tmp_path, "base: missing.yaml\nspace: {train.seed: {choice: [1, 2]}}\n")
    assert problems(spec)[0].startswith(f"{spec}:1: base: no config 'missing.yaml'")
    tiny_base(tmp_path)
    spec = write_spec(tmp_path, "base: base.yaml\noverrides: {train.epoch: 2}\nspace: {train.seed: {choice: [1, 2]}}\n")
    assert problems(spec) == [f"{spec}:2: overrides.train.epoch: train.epoch does not exist; did you mean 'epochs'? "
                              f"(checked against {tmp_path / 'base.yaml'})"]


def test_set_overrides_the_spec_itself(tmp_path):
    tiny_base(tmp_path)
    spec = write_spec(tmp_path, "base: base.yaml\nspace: {train.seed: {choice: [1, 2]}}\nscheduler: asha\n")
    plan = plan_sweep(load_spec(spec, ["trials=3", "space.train.optimizer.lr={grid: [0.1, 0.01]}",
                                       "scheduler.grace_period=2", "metric=val_loss"]))
    assert plan.total_trials == 6 and plan.grid_points == 2
    assert plan.spec.scheduler.grace_period == 2
    assert (plan.metric, plan.mode) == ("val_loss", "min")
    assert plan.trial_overrides({"train.optimizer.lr": 1e-05}) == ["train.optimizer.lr=1.0e-05"]
    found = problems(spec, ["trails=3"])
    assert found == [f"{spec}: --set trails=3: trails does not exist; did you mean 'trials'?"]
    found = problems(spec, ["space.train.seed={choice: [-1]}"])
    assert found[0].startswith(f"{spec}: --set space.train.seed={{choice: [-1]}}: space.train.seed: choice value -1:")


def test_optuna_refuses_grid_and_metric_names_are_known(tmp_path):
    tiny_base(tmp_path)
    spec = write_spec(tmp_path, """\
base: base.yaml
space:
  train.batch_size: {grid: [16, 32]}
search: optuna
metric: val_acc
""")
    found = problems(spec)
    assert found[0].startswith(f"{spec}:3: space.train.batch_size: grid is not supported with search: optuna")
    assert found[1] == f"{spec}:5: metric: unknown metric 'val_acc'; did you mean 'val_accuracy'?"


def test_cli_spec_error_is_one_line_per_problem_and_exit_2(tmp_path):
    tiny_base(tmp_path)
    spec = write_spec(tmp_path, "base: base.yaml\nspace: {train.seed: {chioce: [1, 2]}}\n")
    result = CliRunner().invoke(app, ["sweep", str(spec)])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {spec}:2: space.train.seed.chioce: unknown key 'chioce'; "
                                     "did you mean 'choice'?")
    result = CliRunner().invoke(app, ["sweep", str(spec), "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "not both" in result.output


def test_without_ray_one_line_says_how_to_install(tmp_path, monkeypatch):
    tiny_base(tmp_path)
    spec = write_spec(tmp_path, "base: base.yaml\nspace: {train.seed: {choice: [1, 2]}}\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = CliRunner().invoke(app, ["sweep", str(spec)])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: nettrain sweep needs Ray Tune, which is not installed; "
                                     "pip install 'nettrain[sweep]'")


def test_the_core_never_imports_ray():
    code = ("import sys, nettrain.cli, nettrain.training, nettrain.config, nettrain.sweep.spec, "
            "nettrain.sweep.results, nettrain.sweep.console; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "False"


def test_shipped_sweep_spec_plans():
    plan = plan_sweep(load_spec(ROOT / "configs" / "sweeps" / "quickstart_lr.yaml"))
    assert plan.base == (ROOT / "configs" / "quickstart.yaml").resolve()
    assert plan.total_trials >= 2


# ============================================================================ sweeps on Ray
@pytest.fixture(scope="module")
def ray_local():
    if not HAVE_RAY:
        pytest.skip("the sweep extra (ray[tune]) is not installed")
    from nettrain.sweep import require_ray

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NETTRAIN_FAST", "0")  # the workers inherit it: no compiled code to load
        require_ray()
        import logging

        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        try:
            yield ray
        finally:
            ray.shutdown()


class Recorder:
    """A SweepProgress that keeps every event."""

    def __init__(self, on_result=None):
        self.events: list[tuple] = []
        self.on_result = on_result

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.events.append((name, *args))
            if name == "trial_result" and self.on_result is not None:
                self.on_result(*args)
        return record


def sweep_plan(tmp_path: Path, space: str, extra: str = "", **base_kwargs):
    tiny_base(tmp_path, **base_kwargs)
    spec = write_spec(tmp_path, f"base: base.yaml\nspace:\n{space}\n{extra}output: {{dir: {tmp_path / 'sweep'}}}\n")
    return plan_sweep(load_spec(spec))


def by_status(outcome) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in outcome.records:
        out.setdefault(r.status, []).append(r)
    return out


@needs_ray
def test_grid_sweep_writes_the_files_and_best_yaml_trains(ray_local, tmp_path):
    from nettrain.sweep.runner import run_sweep
    from nettrain.training import train

    plan = sweep_plan(tmp_path, "  train.optimizer.lr: {grid: [0.02, 0.001]}", epochs=2)
    outcome = run_sweep(plan, Recorder())
    folder = outcome.folder.path
    assert not outcome.interrupted
    for name in ("sweep.yaml", "results.csv", "results.json", "best.yaml"):
        assert (folder / name).is_file(), name
    assert (folder / "tune").is_dir()
    results = json.loads((folder / "results.json").read_text())
    assert results["metric"] == "val_accuracy" and results["mode"] == "max"
    assert [t["status"] for t in results["trials"]] == ["completed", "completed"]
    assert sorted(t["params"]["train.optimizer.lr"] for t in results["trials"]) == [0.001, 0.02]
    assert results["best_trial"] == results["trials"][0]["trial"]
    assert results["trials"][0]["best"] >= results["trials"][1]["best"]
    for t in results["trials"]:
        run = folder / t["run_dir"]
        assert t["epochs"] == 2 and len(read_metrics(run / "metrics.jsonl")) == 2
        assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.npz").is_file()
        assert yaml.safe_load((run / "config.yaml").read_text())["train"]["optimizer"]["lr"] == t["params"]["train.optimizer.lr"]
    with open(folder / "results.csv") as f:
        header = f.readline().strip().split(",")
    assert header[:6] == ["trial", "status", "best_val_accuracy", "best_epoch", "last_val_accuracy", "epochs"]
    assert yaml.safe_load((folder / "sweep.yaml").read_text())["base"] == str(plan.base)
    best = load_config(folder / "best.yaml", [f"output.dir={tmp_path / 'best_run'}"])
    assert best.train.optimizer.lr == results["trials"][0]["params"]["train.optimizer.lr"]
    assert yaml.safe_load((folder / "best.yaml").read_text())["output"]["dir"] is None
    assert train(best).epochs_done == 2
    assert (folder / "tune" / "tuner.pkl").is_file()  # Tune's state in the sweep folder, not ~/ray_results


@needs_ray
def test_asha_stops_the_poor_trial_early(ray_local, tmp_path):
    from nettrain.sweep.runner import run_sweep

    # One at a time, the good learning rate first: at epoch 1 the tiny one's loss is worse than
    # the median of the two, so ASHA stops it; its run folder stays a valid one-epoch run.
    plan = sweep_plan(tmp_path, "  train.optimizer.lr: {grid: [0.02, 1.0e-9]}",
                      "metric: val_loss\nconcurrent: 1\nscheduler: {type: asha, grace_period: 1, reduction_factor: 2}\n",
                      epochs=4)
    outcome = run_sweep(plan, Recorder())
    groups = by_status(outcome)
    assert [r.params["train.optimizer.lr"] for r in groups["completed"]] == [0.02]
    stopped = groups["stopped early"]
    assert [r.params["train.optimizer.lr"] for r in stopped] == [1e-9] and stopped[0].epochs == 1
    run = outcome.folder.path / stopped[0].run_dir
    from nettrain.checkpoint import load_checkpoint

    assert load_checkpoint(run / "checkpoints" / "last.npz").epoch == 1
    assert [row["epoch"] for row in read_metrics(run / "metrics.csv")] == [1]


@needs_ray
def test_a_failing_trial_does_not_stop_the_sweep(ray_local, tmp_path):
    from nettrain.sweep.runner import run_sweep

    # 6 classes do not fit the 4 outputs: that trial fails with the trainer's one-line error
    plan = sweep_plan(tmp_path, "  data.synthetic.num_classes: {grid: [6, 4]}", "concurrent: 1\n", epochs=1)
    recorder = Recorder()
    outcome = run_sweep(plan, recorder)
    groups = by_status(outcome)
    assert [r.params for r in groups["completed"]] == [{"data.synthetic.num_classes": 4}]
    failed = groups["failed"][0]
    assert failed.error.startswith("the model outputs 4 classes but the data has 6") and "\n" not in failed.error
    assert ("trial_end", failed.trial, "failed", failed.error) in recorder.events
    assert outcome.best_yaml is not None and not outcome.interrupted
    saved = json.loads((outcome.folder.path / "results.json").read_text())
    assert saved["trials"][-1]["status"] == "failed" and saved["trials"][-1]["error"] == failed.error


@needs_ray
def test_an_interrupted_sweep_resumes_where_it_stopped(ray_local, tmp_path):
    from nettrain.sweep.runner import resume_sweep, run_sweep

    def ctrl_c(trial, row):
        os.kill(os.getpid(), signal.SIGINT)  # what a terminal sends; Tune stops the sweep cleanly

    plan = sweep_plan(tmp_path, "  train.optimizer.lr: {grid: [0.02, 0.01]}", "concurrent: 1\n", epochs=3)
    outcome = run_sweep(plan, Recorder(on_result=ctrl_c))
    assert outcome.interrupted
    first = outcome.records[0]
    assert first.status == "unfinished" and 1 <= first.epochs < 3
    assert json.loads((outcome.folder.path / "results.json").read_text())["trials"][0]["status"] == "unfinished"

    recorder = Recorder()
    resumed = resume_sweep(outcome.folder.path, recorder)
    assert not resumed.interrupted
    assert sorted(r.status for r in resumed.records) == ["completed", "completed"]
    starts = {e[1]: e[4] for e in recorder.events if e[0] == "trial_start"}
    assert starts[first.trial] >= 1  # continued from its checkpoint, not started again
    for r in resumed.records:
        assert [row["epoch"] for row in read_metrics(resumed.folder.path / r.run_dir / "metrics.jsonl")] == [1, 2, 3]


@needs_ray
@pytest.mark.slow
def test_optuna_search_runs(ray_local, tmp_path):
    from nettrain.sweep.runner import run_sweep

    plan = sweep_plan(tmp_path, "  train.optimizer.lr: {loguniform: [1.0e-3, 1.0e-1]}\n"
                                "  train.batch_size: {choice: [16, 32]}", "search: optuna\ntrials: 3\n", epochs=1)
    outcome = run_sweep(plan, Recorder())
    assert [r.status for r in outcome.records] == ["completed"] * 3
    assert all(1e-3 <= r.params["train.optimizer.lr"] <= 1e-1 for r in outcome.records)


@needs_ray
@pytest.mark.slow
def test_cli_sweep_then_train_best_yaml(tmp_path):
    """The whole command in its own process (its own Ray), quiet, then best.yaml trained by nettrain train."""
    tiny_base(tmp_path, epochs=1)
    spec = write_spec(tmp_path, f"base: base.yaml\nspace:\n  train.optimizer.lr: {{grid: [0.02, 0.01]}}\n"
                                f"output: {{dir: {tmp_path / 'sweep'}}}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NETTRAIN_FAST": "0", "HOME": str(tmp_path)}
    cli = [sys.executable, "-m", "nettrain.cli"]
    done = subprocess.run(cli + ["sweep", str(spec)], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "starting Ray" in done.stdout and "best config:" in done.stdout
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert not (tmp_path / ".ray").exists() and not (tmp_path / "ray_results").exists()
    done = subprocess.run(cli + ["train", str(tmp_path / "sweep" / "best.yaml"), "-q"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "runs").glob("tiny-*/checkpoints/best.npz"))


@needs_ray
def test_a_trial_runs_with_the_spec_cpus_as_its_threads(tmp_path, monkeypatch):
    """resources.cpus becomes the trial's NETTRAIN_THREADS before training starts, with the sampled values applied."""
    import types

    import nettrain.training
    from nettrain.sweep import runner

    base = tiny_base(tmp_path)
    seen = {}

    def fake_train(config, resume=None, reporter=None):
        seen.update(threads=os.environ.get("NETTRAIN_THREADS"), lr=config.train.optimizer.lr, resume=resume,
                    run_dir=config.output.dir)

    monkeypatch.setattr(nettrain.training, "train", fake_train)
    monkeypatch.setattr(runner.tune, "get_context", lambda: types.SimpleNamespace(get_trial_id=lambda: "t_00001"))
    monkeypatch.setattr(runner.tune, "get_checkpoint", lambda: None)
    monkeypatch.setenv("NETTRAIN_THREADS", "7")
    setup = runner.TrialSetup(base=str(base), base_shown="base.yaml", fixed=(), metric="val_accuracy",
                              trials_dir=str(tmp_path / "trials"), threads=3)
    runner.run_trial({"train.optimizer.lr": 0.005}, setup)
    assert seen == {"threads": "3", "lr": 0.005, "resume": None, "run_dir": str(tmp_path / "trials" / "t_00001")}
