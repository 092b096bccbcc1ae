"""Fault injection: training processes killed (SIGKILL) or stopped (SIGINT, SIGTERM) at random points.

After every kill the run folder must be usable: ``last.npz`` (if any) loads,
``metrics.csv`` is well-formed (every row complete, no torn line) and
``--resume`` carries the run to the end -- with the same final weights and the
same metric rows as a run that was never interrupted.

The points are random; a failure message shows the seed, and
``NETTRAIN_FAULT_SEED=<seed>`` replays it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nettrain import kernels
from nettrain.checkpoint import load_checkpoint
from nettrain.cli import app
from nettrain.runs import METRIC_COLUMNS
from nettrain.training import Trainer
from nettrain.config import load_config
from tinyrun import TIME_COLUMNS, tiny_config_dict, write_config

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 8
# The subprocesses run the NumPy kernels; so does this process (see numpy_kernels), so that
# an interrupted and resumed run can be compared bit for bit with one that was not.
ENV = {**os.environ, "NETTRAIN_FAST": "0", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def numpy_kernels():
    previous = kernels.set_compiled(False)
    yield
    kernels.set_compiled(previous)


@pytest.fixture
def seed():
    value = int(os.environ.get("NETTRAIN_FAULT_SEED", random.SystemRandom().randrange(10**6)))
    print(f"NETTRAIN_FAULT_SEED={value}")  # shown by pytest when the test fails
    return value


def fault_config(path: Path, run: Path) -> Path:
    """The tiny synthetic config with more samples: about 0.1 s an epoch, 47 steps each."""
    config = tiny_config_dict(run, epochs=EPOCHS)
    config["data"]["synthetic"]["train_size"] = 1500
    return write_config(path, config)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same config trained without interruption, in this process."""
    tmp = tmp_path_factory.mktemp("reference")
    config = load_config(fault_config(tmp / "faults.yaml", tmp / "run"))
    Trainer(config).fit(handle_signals=False)
    return tmp / "run"


# --------------------------------------------------------------------------- checks

def assert_well_formed_metrics(run: Path) -> list[dict]:
    """metrics.csv parses, every row is complete, epochs count 1, 2, ...; metrics.jsonl agrees."""
    path = run / "metrics.csv"
    if not path.exists():
        return []
    text = path.read_text()
    assert text == "" or text.endswith("\n"), f"torn last line in {path}: {text[-80:]!r}"
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return []
    header = rows[0]
    assert header == METRIC_COLUMNS
    for row in rows[1:]:
        assert len(row) == len(header), f"incomplete row {row}"
        float(row[1]), float(row[2]), float(row[5])  # every number parses
    records = [dict(zip(header, row)) for row in rows[1:]]
    assert [int(r["epoch"]) for r in records] == list(range(1, len(records) + 1))
    jsonl = run / "metrics.jsonl"
    if jsonl.exists():
        lines = jsonl.read_text().splitlines()
        assert all(json.loads(line)["epoch"] == i + 1 for i, line in enumerate(lines))
        # both files get the row before the checkpoint; a kill may fall between the two appends
        assert len(records) - len(lines) in (0, 1)
    return records


def assert_run_folder_sound(run: Path) -> int:
    """The checks after a kill; returns the epoch of last.npz (-1 when there is none yet)."""
    rows = assert_well_formed_metrics(run)
    last = run / "checkpoints" / "last.npz"
    if not last.exists():
        assert len(rows) <= 1  # a row is written just before the first checkpoint
        return -1
    ckpt = load_checkpoint(last)
    assert 0 <= ckpt.epoch <= EPOCHS
    # rows are written before the checkpoint, so at most one row is ahead of it
    assert len(rows) - ckpt.epoch in (0, 1), (len(rows), ckpt.epoch)
    best = run / "checkpoints" / "best.npz"
    if best.exists():
        load_checkpoint(best)
    return ckpt.epoch


def assert_same_final_state(run: Path, reference: Path) -> None:
    a = load_checkpoint(run / "checkpoints" / "last.npz")
    b = load_checkpoint(reference / "checkpoints" / "last.npz")
    assert (a.epoch, a.batch, a.global_step) == (b.epoch, b.batch, b.global_step)
    for group in ("params", "buffers", "optimizer", "schedule"):
        mine, theirs = getattr(a, group), getattr(b, group)
        assert mine.keys() == theirs.keys(), group
        for name in mine:
            assert np.array_equal(mine[name], theirs[name]), f"{group} {name} differs"
    assert a.rng_states == b.rng_states
    untimed = lambda rows: [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in rows]  # noqa: E731
    assert untimed(assert_well_formed_metrics(run)) == untimed(assert_well_formed_metrics(reference))


def assert_no_temporaries(run: Path) -> None:
    leftovers = [p.name for folder in (run, run / "checkpoints") for p in folder.iterdir() if ".tmp" in p.name]
    assert not leftovers


# --------------------------------------------------------------------------- processes

def launch(config: Path, run: Path | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "nettrain.cli", "train", str(config), "--quiet"]
    if run is not None:
        args += ["--resume", str(run)]
    return subprocess.Popen(args, cwd=config.parent, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def stamp(path: Path):
    try:
        st = path.stat()
        return st.st_ino, st.st_mtime_ns
    except FileNotFoundError:
        return None


def wait_for_change(proc: subprocess.Popen, path: Path, before, timeout: float = 90.0) -> None:
    """Wait until ``path`` is (re)written, or the process ends."""
    deadline = time.monotonic() + timeout
    while stamp(path) == before and proc.poll() is None:
        assert time.monotonic() < deadline, f"{path} was not written within {timeout} s"
        time.sleep(0.005)


def train_with_kills(tmp_path: Path, kills: int, seed: int) -> tuple[Path, Path, list[int]]:
    """Start the run, SIGKILL it ``kills`` times at random moments (resuming in between)."""
    rng = random.Random(seed)
    run = tmp_path / "run"
    config = fault_config(tmp_path / "faults.yaml", run)
    epochs_at_kill = []
    for _ in range(kills):
        resumable = (run / "checkpoints" / "last.npz").exists()
        before = stamp(run / "config.yaml")  # a started or resumed trainer (re)writes it first
        proc = launch(config, run if resumable else None)
        wait_for_change(proc, run / "config.yaml", before)
        time.sleep(rng.uniform(0.0, 1.2))
        proc.kill()
        proc.wait()
        epochs_at_kill.append(assert_run_folder_sound(run))
    return run, config, epochs_at_kill


def resume_to_the_end(config: Path, run: Path, *options: str) -> None:
    if not (run / "checkpoints" / "last.npz").exists():  # killed before its first checkpoint
        refused = runner.invoke(app, ["train", str(config), "--quiet", "--resume", str(run)])
        assert refused.exit_code == 2 and "start it again without --resume" in refused.stderr
        result = runner.invoke(app, ["train", str(config), "--quiet"])
    else:
        result = runner.invoke(app, ["train", str(config), "--quiet", "--resume", str(run), *options])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "checkpoints" / "last.npz").epoch == EPOCHS


# --------------------------------------------------------------------------- tests

def test_sigkill_three_times_then_resume_matches_an_uninterrupted_run(tmp_path, seed, reference):
    run, config, epochs = train_with_kills(tmp_path, 3, seed)
    resume_to_the_end(config, run)
    assert_same_final_state(run, reference)
    assert_no_temporaries(run)


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(3))
def test_sigkill_ten_times_then_resume_matches_an_uninterrupted_run(tmp_path, seed, reference, round_):
    run, config, epochs = train_with_kills(tmp_path, 10, seed + round_)
    resume_to_the_end(config, run)
    assert_same_final_state(run, reference)
    assert_no_temporaries(run)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_writes_checkpoint_and_resume_matches(tmp_path, seed, reference, signum):
    rng = random.Random(seed)
    run = tmp_path / "run"
    config = fault_config(tmp_path / "faults.yaml", run)
    proc = launch(config)
    wait_for_change(proc, run / "checkpoints" / "last.npz", None)  # the first epoch is done
    time.sleep(rng.uniform(0.0, 0.15))
    assert proc.poll() is None, "the run ended before the signal; make it longer"
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    assert f"resume with: nettrain train --resume {run}\n" in stderr
    ckpt = load_checkpoint(run / "checkpoints" / "last.npz")
    assert (ckpt.epoch, ckpt.batch) < (EPOCHS, 0)
    rows = assert_well_formed_metrics(run)
    assert len(rows) == ckpt.epoch  # a clean stop leaves no row ahead of its checkpoint

    resumed = runner.invoke(app, ["train", "--quiet", "--resume", str(run)])  # the run folder alone
    assert resumed.exit_code == 0, resumed.output
    assert_same_final_state(run, reference)
    assert_no_temporaries(run)


# A crash in the middle of writing a checkpoint, made certain: np.savez writes half the
# archive into the temporary file, then the process kills itself.
DIE_MID_WRITE = """
import io, os, signal, sys
import numpy as np
real_savez, calls = np.savez, []

def savez_then_die(f, **arrays):
    calls.append(1)
    if len(calls) < int(os.environ["DIE_AT_WRITE"]):
        return real_savez(f, **arrays)
    buf = io.BytesIO()
    real_savez(buf, **arrays)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

np.savez = savez_then_die
from nettrain.cli import main
sys.argv = ["nettrain", "train", sys.argv[1], "--quiet"]
main()
"""


@pytest.mark.parametrize("write", [pytest.param(3, id="best.npz", marks=pytest.mark.slow),
                                   pytest.param(4, id="last.npz")])
def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, reference, write):
    run = tmp_path / "run"
    config = fault_config(tmp_path / "faults.yaml", run)
    proc = subprocess.run([sys.executable, "-c", DIE_MID_WRITE, str(config)], cwd=tmp_path,
                          env={**ENV, "DIE_AT_WRITE": str(write)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # epoch 1 wrote best.npz and last.npz (writes 1 and 2); epoch 2, which improves, died writing
    # its best.npz (write 3) or its last.npz (write 4)
    half = [p.name for p in (run / "checkpoints").iterdir() if ".tmp" in p.name]
    assert len(half) == 1
    assert assert_run_folder_sound(run) == 1
    resume_to_the_end(config, run)
    assert_same_final_state(run, reference)
    assert_no_temporaries(run)


def test_torn_metric_lines_are_cut_away_on_resume(tmp_path, reference):
    run = tmp_path / "run"
    config = fault_config(tmp_path / "faults.yaml", run)
    stopped = runner.invoke(app, ["train", str(config), "--quiet", "--epochs", "2"])
    assert stopped.exit_code == 0, stopped.output
    # what a crash in the middle of appending epoch 3's row could leave on a file system without atomic appends
    with open(run / "metrics.csv", "a") as f:
        f.write("3,0.41,0.8")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_lo')
    resume_to_the_end(config, run, "--allow-changes")  # from 2 epochs to the config's 8
    assert_same_final_state(run, reference)
