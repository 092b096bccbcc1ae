"""Data-parallel training under a real mpiexec (MPICH from the ``mpi`` extra): every test starts the job itself.

Skipped, with the reason, where mpi4py or mpiexec is missing. Every run has a time
limit, so a job that hangs fails the test instead of the suite. The pieces are
tested without MPI in test_distributed_parts.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nettrain.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def _mpi_missing() -> str | None:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install -e '.[mpi]')"
    if MPIEXEC is None:
        return "no mpiexec on PATH or beside the Python interpreter (pip install -e '.[mpi]')"
    return None


pytestmark = pytest.mark.skipif(_mpi_missing() is not None, reason=_mpi_missing() or "")


def _launcher_flags() -> list[str]:
    """Open MPI refuses root and more ranks than cores without these; MPICH needs none."""
    if MPIEXEC is None:
        return []
    version = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True, timeout=30).stdout
    return ["--allow-run-as-root", "--oversubscribe"] if "Open MPI" in version else []


FLAGS = _launcher_flags()
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "NETTRAIN_THREADS": "1", "PYTHONUNBUFFERED": "1"}
QUICKSTART = ["train", "configs/quickstart.yaml", "--set", "data.subset=1024", "--set", "train.batch_size=64", "-q"]
NETTRAIN = [sys.executable, "-m", "nettrain.cli"]


def mpiexec_argv(n: int, args: list[str], program: list[str] = NETTRAIN) -> list[str]:
    return [MPIEXEC, *FLAGS, "-n", str(n), *program, *args]


def run(argv: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def weights(run_dir: Path) -> dict[str, np.ndarray]:
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.npz")
    return {**{f"param/{k}": v for k, v in ckpt.params.items()}, **{f"buffer/{k}": v for k, v in ckpt.buffers.items()}}


def assert_close(a: dict[str, np.ndarray], b: dict[str, np.ndarray], tol: float = 1e-4) -> None:
    assert a.keys() == b.keys()
    for name in a:
        error = np.linalg.norm(a[name] - b[name]) / max(np.linalg.norm(a[name]), 1e-30)
        assert error < tol, f"{name}: relative difference {error:.2e}"


def only_folder(root: Path) -> Path:
    folders = list(root.iterdir())
    assert len(folders) == 1, f"one run folder expected (rank 0 writes), found {[f.name for f in folders]}"
    return folders[0]


# --------------------------------------------------------------------------- one process vs two ranks

@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """quickstart on 1,024 samples, one epoch, global batch 64, in one process."""
    out = tmp_path_factory.mktemp("one") / "run"
    done = run([*NETTRAIN, *QUICKSTART, "--set", "train.epochs=1", "--set", f"output.dir={out}"])
    assert done.returncode == 0, done.stderr
    return out


def test_two_ranks_train_the_batchnorm_model_as_one_process_does(one_process, tmp_path):
    logs = ["--tensorboard"] if importlib.util.find_spec("tensorboardX") else []
    done = run(mpiexec_argv(2, [*QUICKSTART, "--set", "train.epochs=1", "--set", f"output.root={tmp_path}", *logs]))
    assert done.returncode == 0, done.stderr
    folder = only_folder(tmp_path)  # rank 1 made no run folder of its own
    if logs:
        assert len(list((folder / "tensorboard").iterdir())) == 1  # one event file, rank 0's
    assert_close(weights(one_process), weights(folder))
    assert len((folder / "metrics.csv").read_text().splitlines()) == 2  # the epoch's row, written once
    assert done.stdout.count("run folder") == 2  # the header and the last line, from rank 0 only
    assert "2 ranks x 1 thread each" in done.stdout and "BatchNorm statistics over the global batch" in done.stdout
    assert "process ids: ranks 0-1 on" in done.stdout
    assert done.stderr == ""


def test_two_ranks_train_the_lstm_as_one_process_does(tmp_path):
    args = ["train", "configs/fashion_lstm.yaml", "--set", "data.path=data/fashion-mnist-subset", "--set",
            "data.subset=512", "--set", "train.epochs=1", "--set", "train.batch_size=64", "-q"]
    one = run([*NETTRAIN, *args, "--set", f"output.dir={tmp_path / 'one'}"])
    two = run(mpiexec_argv(2, [*args, "--set", f"output.dir={tmp_path / 'two'}"]))
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert_close(weights(tmp_path / "one"), weights(tmp_path / "two"))


REPLICAS = """
import json, sys, zlib
import numpy as np
from nettrain.config import load_config
from nettrain.distributed.comm import world
from nettrain.distributed.trainer import DistributedTrainer
from nettrain.training import Reporter

comm = world()
trainer = DistributedTrainer(load_config(sys.argv[1], sys.argv[2:]), comm=comm, reporter=Reporter())
trainer.fit(handle_signals=False)
crc = lambda arrays: zlib.crc32(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays.values()))
print(json.dumps({"rank": comm.rank, "params": crc(trainer.model.parameters()),
                  "buffers": crc(trainer.model.buffers()), "run": str(trainer.run.path)}), flush=True)
"""


def test_without_synced_batchnorm_ranks_differ_from_one_process_but_agree_with_each_other(one_process, tmp_path):
    script = tmp_path / "replicas.py"
    script.write_text(REPLICAS)
    overrides = ["data.subset=1024", "train.batch_size=64", "train.epochs=1", "train.distributed.sync_batchnorm=false",
                 f"output.dir={tmp_path / 'run'}"]
    done = run(mpiexec_argv(2, ["configs/quickstart.yaml", *overrides], program=[sys.executable, str(script)]))
    assert done.returncode == 0, done.stderr
    ranks = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    assert ranks[0]["params"] == ranks[1]["params"] and ranks[0]["buffers"] == ranks[1]["buffers"]
    mine, theirs = weights(tmp_path / "run"), weights(one_process)
    differences = [np.linalg.norm(mine[k] - theirs[k]) / np.linalg.norm(theirs[k]) for k in mine]
    assert max(differences) > 1e-3  # per-rank statistics: another computation than one process's


def test_eval_shards_the_split_and_reports_what_one_process_reports(one_process):
    one = run([*NETTRAIN, "eval", str(one_process), "--format", "json"])
    two = run(mpiexec_argv(2, ["eval", str(one_process), "--format", "json"]))
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    mine, theirs = json.loads(two.stdout), json.loads(one.stdout)  # rank 0 printed the report, once
    assert mine["samples"] == theirs["samples"] and mine["confusion_matrix"] == theirs["confusion_matrix"]
    assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-6)


def test_bench_reports_the_global_throughput_of_the_ranks():
    done = run(mpiexec_argv(2, ["bench", "configs/quickstart.yaml", "--batch-size", "16", "--steps", "2",
                                "--warmup", "1", "--format", "json"]))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["ranks"] == 2 and result["threads"] == 1 and result["batch_size"] == 16
    assert result["train_img_per_s"] == pytest.approx(16 / (result["train_step_ms"] / 1e3))
    assert result["peak_rss_mib_all_ranks"] >= result["peak_rss_mib"] > 0
    assert result["peak_fraction"] == pytest.approx(result["train_gflops"] / result["sgemm_peak_gflops"])


# --------------------------------------------------------------------------- faults

def start(argv: list[str]) -> subprocess.Popen:
    """The job in the background; a thread hands its stdout lines to ``proc.lines`` as they come."""
    proc = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    proc.lines = queue.Queue()
    proc.seen = []

    def read() -> None:
        for line in proc.stdout:
            proc.lines.put(line)
        proc.lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return proc


def wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 120) -> str:
    """The first line of the job's stdout holding ``text``, as soon as it is printed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = proc.lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:
            break
        proc.seen.append(line)
        if text in line:
            return line
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"no line with {text!r} within {timeout} s; stdout: {proc.seen}")


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str, float]:
    """Wait for the job to end (killing it after ``timeout`` s): exit code, stdout, stderr, seconds waited."""
    started = time.monotonic()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"the job did not end within {timeout} s:\n{proc.stderr.read()}") from None
    seconds = time.monotonic() - started
    lines = proc.seen
    while (line := proc.lines.get(timeout=10)) is not None:
        lines.append(line)
    return proc.returncode, "".join(lines), proc.stderr.read(), seconds


def test_sigterm_stops_every_rank_after_one_step_and_the_run_resumes(tmp_path, one_process):
    run_dir = tmp_path / "run"
    args = [*QUICKSTART, "--set", "train.epochs=1", "--set", f"output.dir={run_dir}"]
    proc = start(mpiexec_argv(2, args))
    wait_for_line(proc, "process ids:")
    os.kill(proc.pid, signal.SIGTERM)  # mpiexec forwards it to every rank
    code, out, err, _ = finish(proc, 120)
    assert code == 143, err
    assert f"resume with: mpiexec -n 2 nettrain train --resume {run_dir}" in err
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.npz")
    assert ckpt.epoch == 0 and 0 < ckpt.batch < 16, "stopped mid-epoch"
    done = run(mpiexec_argv(2, ["train", "--resume", str(run_dir), "-q"]))  # the run folder's own config
    assert done.returncode == 0, done.stderr
    assert_close(weights(one_process), weights(run_dir))
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 2


def test_a_killed_rank_ends_the_job_within_seconds(tmp_path):
    proc = start(mpiexec_argv(2, [*QUICKSTART, "--set", "train.epochs=3", "--set", f"output.dir={tmp_path / 'run'}"]))
    line = wait_for_line(proc, "process ids:")
    victim = int(line.split(":")[-1].split()[1])  # rank 1's process id
    last = tmp_path / "run" / "checkpoints" / "last.npz"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline:  # after epoch 1's checkpoint
        time.sleep(0.05)
    os.kill(victim, signal.SIGKILL)
    code, out, err, seconds = finish(proc, 60)
    assert code != 0 and seconds < 30
    named = [line for line in err.splitlines() if line.startswith("error: ")]
    assert named == [f"error: rank 1 of 2 (process {victim} on {socket.gethostname()}) was killed by SIGKILL "
                     "(the out-of-memory killer or kill -9); mpiexec stops the other ranks, and the run folder "
                     "keeps the last checkpoint saved before it"], err
    assert load_checkpoint(last).epoch >= 1  # the last good one, whole


FAILING_RANK = """
import sys
from nettrain.distributed.step import DistributedTrainStep

calls = [0]
step = DistributedTrainStep.__call__

def failing(self, x, y):
    calls[0] += 1
    if calls[0] == 6:
        raise RuntimeError("this rank broke")
    return step(self, x, y)

DistributedTrainStep.__call__ = failing
sys.argv = ["nettrain", *sys.argv[1:]]
from nettrain.cli import main
main()
"""


def test_a_rank_that_raises_ends_the_job_with_one_line_naming_it(tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(FAILING_RANK)
    run_dir = tmp_path / "run"
    args = ["train", "configs/quickstart.yaml", "--set", "data.subset=256", "--set", "train.batch_size=64",
            "--set", "train.epochs=3", "--set", f"output.dir={run_dir}", "-q"]
    argv = [MPIEXEC, *FLAGS, "-n", "1", *NETTRAIN, *args, ":", "-n", "1", sys.executable, str(script), *args]
    started = time.monotonic()
    done = run(argv, timeout=180)
    assert done.returncode != 0 and time.monotonic() - started < 150
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: rank 1 of 2: RuntimeError: this rank broke"), done.stderr
    assert load_checkpoint(run_dir / "checkpoints" / "last.npz").epoch == 1  # the last good one: epoch 1's


def test_a_rank_with_another_config_is_stopped_at_start(tmp_path):
    args = [*QUICKSTART, "--set", f"output.dir={tmp_path / 'run'}"]
    argv = [MPIEXEC, *FLAGS, "-n", "1", *NETTRAIN, *args, ":", "-n", "1", *NETTRAIN, *args, "--set", "train.seed=5"]
    done = run(argv, timeout=180)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        done.stderr.strip().splitlines()[0]] and "rank 1 of 2 has another config than rank 0" in done.stderr
    assert not (tmp_path / "run").exists()
