"""The pieces of data-parallel training, on N ranks as threads of one process (tests/fakecomm.py): no MPI needed.

The end-to-end runs under mpiexec are in test_distributed.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fakecomm import run_ranks
from gradcheck import numeric_grad, rel_error
from nettrain.builder import build_model
from nettrain.data import load_data
from nettrain.distributed import launch
from nettrain.distributed.evaluation import DistributedEvalLoop
from nettrain.distributed.step import CollectiveStop, DistributedTrainStep, SyncStatistics, share
from nettrain.distributed.trainer import DistributedTrainer, EveryRankError, agree
from nettrain.layers.dropout import Dropout, rows_of_draws
from nettrain.layers.norm import BatchNorm
from nettrain.losses import build_loss
from nettrain.optimizers import build_optimizer
from nettrain.training import EvalLoop, Reporter, Trainer, TrainStep
from tinyrun import tiny_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_thread_per_rank(monkeypatch):
    monkeypatch.setenv("NETTRAIN_THREADS", "1")


def relative(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


# --------------------------------------------------------------------------- slices

@pytest.mark.parametrize("n,size", [(64, 2), (65, 2), (10, 3), (2, 3), (1, 4), (7, 7)])
def test_shares_cover_the_batch_in_rank_order(n, size):
    shares = [share(n, rank, size) for rank in range(size)]
    assert shares[0][0] == 0 and shares[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
    sizes = [stop - start for start, stop in shares]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n


# --------------------------------------------------------------------------- BatchNorm

def built_batchnorm(in_shape, dtype=np.float64, seed=0):
    layer = BatchNorm(name="bn", momentum=0.8)
    layer.build(in_shape, np.random.default_rng(seed))
    layer.cast(dtype)
    rng = np.random.default_rng(seed + 1)
    layer.params["gamma"][...] = rng.uniform(0.5, 1.5, layer.params["gamma"].shape)
    layer.params["beta"][...] = rng.standard_normal(layer.params["beta"].shape)
    return layer


@pytest.mark.parametrize("in_shape,n,size", [((3, 4, 5), 7, 2), ((6,), 9, 3), ((4, 5), 5, 3), ((2, 3, 3), 2, 3)])
def test_synced_batchnorm_equals_one_batchnorm_on_the_whole_batch(in_shape, n, size):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, *in_shape)) * 3 + 1
    g = rng.standard_normal((n, *in_shape))
    single = built_batchnorm(in_shape)
    y_single = single.forward(x, training=True)
    dx_single = single.backward(g)

    def rank(comm):
        start, stop = share(n, comm.rank, size)
        layer = built_batchnorm(in_shape)
        layer.statistics = stats = SyncStatistics(comm)
        stats.present = stop > start
        part = slice(start, stop) if stop > start else slice(0, 1)  # a stand-in row when the rank has none
        y = layer.forward(x[part], training=True)
        dx = layer.backward(g[part] if stop > start else np.zeros_like(g[part]))
        grads = {k: v * (stop > start) for k, v in layer.grads.items()}
        return (y, dx, grads, layer.buffers) if stop > start else (None, None, grads, layer.buffers)

    results = run_ranks(size, rank)
    y = np.concatenate([r[0] for r in results if r[0] is not None])
    dx = np.concatenate([r[1] for r in results if r[1] is not None])
    assert rel_error(y, y_single) < 1e-12 and rel_error(dx, dx_single) < 1e-12
    for key in ("gamma", "beta"):
        assert rel_error(sum(r[2][key] for r in results), single.grads[key]) < 1e-12
    for r in results:  # every rank updated its running statistics with the global ones
        for key, value in single.buffers.items():
            assert rel_error(r[3][key], value) < 1e-12, key


def test_synced_batchnorm_gradients_match_central_differences():
    """The input gradient of two ranks' slices, against central differences of one BatchNorm on the whole batch."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 2, 3, 3))
    g = rng.standard_normal(x.shape)

    reference = built_batchnorm((2, 3, 3))

    def loss():
        return float(np.sum(reference.forward(x, training=True) * g))

    def rank(comm):
        start, stop = share(6, comm.rank, 2)
        layer = built_batchnorm((2, 3, 3))
        layer.statistics = SyncStatistics(comm)
        layer.forward(x[start:stop], training=True)
        return layer.backward(g[start:stop]), dict(layer.grads)

    results = run_ranks(2, rank)
    assert rel_error(np.concatenate([r[0] for r in results]), numeric_grad(loss, x)) < 1e-7
    for key in ("gamma", "beta"):
        assert rel_error(results[0][1][key] + results[1][1][key], numeric_grad(loss, reference.params[key])) < 1e-7


def test_batchnorm_by_default_uses_its_own_batch_and_the_kernel():
    layer = built_batchnorm((3,))
    assert not layer.statistics.shared
    x = np.random.default_rng(0).standard_normal((5, 3))
    layer.forward(x, training=True)
    assert layer._count == 5


# --------------------------------------------------------------------------- Dropout

def test_dropout_slices_draw_the_masks_of_the_whole_batch():
    def dropout():
        layer = Dropout(name="drop", rate=0.5, seed=3)
        layer.build((4, 5), np.random.default_rng(0))
        return layer

    x = np.ones((7, 4, 5), np.float32)
    whole = dropout()
    expected = [whole.forward(x, training=True) for _ in range(2)]
    parts = [[], []]
    slices = [dropout() for _ in range(3)]
    for step in range(2):
        for rank, layer in enumerate(slices):
            start, stop = share(7, rank, 3)
            layer.batch_slice = (start, 7)
            parts[step].append(layer.forward(x[start:stop], training=True))
    for step in range(2):
        assert np.array_equal(np.concatenate(parts[step]), expected[step])
    for layer in slices:  # the generators moved on as the whole batch's did
        assert layer.rng.bit_generator.state == whole.rng.bit_generator.state


@pytest.mark.parametrize("per_row", [(3,), (1,), (2, 3), (4,)])
@pytest.mark.parametrize("kept_half", [False, True])
def test_rows_of_draws_skip_the_other_rows_as_drawing_them_would(per_row, kept_half):
    """Any rows of a whole batch's float32 draws, and the generator left where the whole draw leaves it,
    also with odd row sizes and a 32-bit half kept from an earlier odd draw."""
    total = 7
    for first in range(total):
        for rows in range(1, total - first + 1):
            whole, part = np.random.default_rng(11), np.random.default_rng(11)
            if kept_half:
                whole.random(3, dtype=np.float32), part.random(3, dtype=np.float32)
            expected = whole.random((total, *per_row), dtype=np.float32)[first:first + rows]
            got = rows_of_draws(part, (rows, *per_row), first, total)
            assert got.shape == expected.shape and np.array_equal(got, expected)
            assert part.bit_generator.state == whole.bit_generator.state
            assert np.array_equal(part.random(5, dtype=np.float32), whole.random(5, dtype=np.float32))


def test_rows_of_draws_with_another_bit_generator_draw_every_row():
    whole, part = np.random.Generator(np.random.MT19937(2)), np.random.Generator(np.random.MT19937(2))
    expected = whole.random((6, 3), dtype=np.float32)[2:5]
    assert np.array_equal(rows_of_draws(part, (3, 3), 2, 6), expected)
    assert part.bit_generator.state["state"]["pos"] == whole.bit_generator.state["state"]["pos"]


# --------------------------------------------------------------------------- the step

def fresh_step(config, comm=None, **kwargs):
    model = build_model(config, seed=0)
    model.cast(np.float32)
    args = (model, build_loss(config.train.loss), build_optimizer(config.train.optimizer, model.parameters()))
    return TrainStep(*args) if comm is None else DistributedTrainStep(*args, comm=comm, **kwargs)


@pytest.mark.parametrize("size,sizes", [(2, (32, 32, 8)), (3, (32, 17, 2)), (4, (3, 1))])
def test_ranks_take_the_step_one_process_takes(tmp_path, size, sizes):
    """Batches that split evenly, unevenly and into fewer rows than ranks (stand-in rows)."""
    config = tiny_config(tmp_path, augment=False)
    data = load_data(config.data, (1, 8, 8), seed=0)
    batches, start = [], 0
    for n in sizes:
        batches.append((data.train.x[start:start + n], data.train.y[start:start + n]))
        start += n
    single = fresh_step(config)
    expected = [single(x, y).sums for x, y in batches]

    def rank(comm):
        step = fresh_step(config, comm)
        sums = [step(x, y).sums for x, y in batches]
        return sums, step.model.parameters(), step.model.buffers(), comm.calls

    results = run_ranks(size, rank)
    for sums, params, buffers, _ in results:
        for got, want in zip(sums, expected):
            assert got.samples == want.samples
            assert got.loss_sum == pytest.approx(want.loss_sum, rel=1e-5)
            assert got.accuracy_sum == pytest.approx(want.accuracy_sum, abs=1e-6)
        for name, value in single.model.parameters().items():
            assert relative(value, params[name]) < 1e-5, name
        for name, value in single.model.buffers().items():
            assert relative(value, buffers[name]) < 1e-5, name
    for _, params, buffers, calls in results[1:]:  # every rank holds rank 0's weights bit for bit
        assert calls == results[0][3]
        for name, value in results[0][1].items():
            assert np.array_equal(value, params[name]), name
    # one flat all-reduce of the gradients and the sums per step, besides BatchNorm's
    assert results[0][3].count("allreduce_sum") == len(sizes) * 2  # BatchNorm backward; gradients and sums


def test_without_synced_batchnorm_the_running_statistics_stay_the_same_on_every_rank(tmp_path):
    config = tiny_config(tmp_path, augment=False)
    data = load_data(config.data, (1, 8, 8), seed=0)
    x, y = data.train.x[:32], data.train.y[:32]
    single = fresh_step(config)
    single(x, y)

    def rank(comm):
        step = fresh_step(config, comm, sync_batchnorm=False)
        step(x, y)
        step(x, y)
        return step.model.parameters(), step.model.buffers()

    (params0, buffers0), (params1, buffers1) = run_ranks(2, rank)
    for name in buffers0:
        assert np.array_equal(buffers0[name], buffers1[name]), name
    for name in params0:
        assert np.array_equal(params0[name], params1[name]), name
    # per-rank statistics: not what one process computes on the whole batch
    once = fresh_step(config, comm=None)
    once(x, y)
    assert relative(once.model.buffers()["bn.running_var"], buffers0["bn.running_var"]) > 1e-4


def test_a_signal_on_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    config = tiny_config(tmp_path, augment=False)
    data = load_data(config.data, (1, 8, 8), seed=0)
    x, y = data.train.x[:32], data.train.y[:32]

    def rank(comm):
        stop = CollectiveStop()
        step = fresh_step(config, comm, stop=stop)
        agreed_at = None
        for k in range(4):
            if comm.rank == 1 and k == 1:
                stop._handle(signal.SIGTERM, None)  # as the signal handler would, on rank 1 only
            step(x, y)
            if stop.requested and agreed_at is None:
                agreed_at = k
        return agreed_at, stop.signum

    assert run_ranks(3, rank) == [(1, signal.SIGTERM)] * 3


# --------------------------------------------------------------------------- evaluation

def test_sharded_evaluation_adds_up_to_the_whole_split(tmp_path):
    config = tiny_config(tmp_path, augment=False)
    data = load_data(config.data, (1, 8, 8), seed=0)
    model = build_model(config, seed=0)
    model.cast(np.float32)
    loss = build_loss(config.train.loss)
    whole = EvalLoop(model, loss, 16, top_ks=(2,), confusion_classes=4).run(data.train.x, data.train.y)

    def rank(comm):
        loop = DistributedEvalLoop(model, loss, 16, top_ks=(2,), confusion_classes=4, comm=comm)
        return loop.run(data.train.x, data.train.y)

    for sums in run_ranks(3, rank):
        assert sums.samples == whole.samples
        assert np.array_equal(sums.confusion, whole.confusion)
        for key, value in whole.means().items():
            assert sums.means()[key] == pytest.approx(value, rel=1e-6), key


# --------------------------------------------------------------------------- the trainer

def test_ranks_train_the_run_one_process_trains_and_only_rank_0_writes(tmp_path):
    """Augmentation, dropout, BatchNorm and a last batch of 2 rows on 3 ranks (one holds a stand-in row)."""
    config = tiny_config(tmp_path, "single", overrides=["train.batch_size=33"], epochs=2)
    single = Trainer(config, reporter=Reporter())
    single.fit(handle_signals=False)
    parallel = tiny_config(tmp_path, "ranks", overrides=["train.batch_size=33"], epochs=2)

    def rank(comm):
        trainer = DistributedTrainer(parallel, comm=comm, reporter=Reporter())
        result = trainer.fit(handle_signals=False)
        return trainer.model.parameters(), trainer.model.buffers(), result

    results = run_ranks(3, rank)
    for params, buffers, result in results:
        for name, value in single.model.parameters().items():
            assert relative(value, params[name]) < 1e-5, name
        for name, value in single.model.buffers().items():
            assert relative(value, buffers[name]) < 1e-5, name
        assert [r["train_loss"] for r in result.rows] == pytest.approx(
            [r["train_loss"] for r in single.recorder.rows], rel=1e-5)
    written = sorted(p.relative_to(tmp_path / "ranks").as_posix() for p in (tmp_path / "ranks").rglob("*"))
    assert written == sorted(p.relative_to(tmp_path / "single").as_posix() for p in (tmp_path / "single").rglob("*"))
    assert len((tmp_path / "ranks" / "metrics.csv").read_text().splitlines()) == 3  # header and two epochs, once


def test_a_run_resumes_on_another_rank_count_and_says_so(tmp_path):
    config = tiny_config(tmp_path, "run", epochs=2)
    first = Trainer(config, reporter=Reporter())
    first.epochs = 1
    first.fit(handle_signals=False)
    uninterrupted = Trainer(tiny_config(tmp_path, "whole", epochs=2), reporter=Reporter())
    uninterrupted.fit(handle_signals=False)

    class Notes(Reporter):
        def __init__(self):
            self.notes = []

        def note(self, message):
            self.notes.append(message)

    def rank(comm):
        reporter = Notes()
        trainer = DistributedTrainer(config, comm=comm, resume=tmp_path / "run", reporter=reporter)
        trainer.fit(handle_signals=False)
        return trainer.model.parameters(), reporter.notes

    results = run_ranks(2, rank)
    assert any("saved by 1 process(es) and continues on 2 ranks" in n for n in results[0][1])
    assert results[1][1] == []  # only rank 0 speaks
    for params, _ in results:
        for name, value in uninterrupted.model.parameters().items():
            assert relative(value, params[name]) < 1e-5, name


def test_a_rank_with_other_data_is_stopped_at_start(tmp_path):
    config = tiny_config(tmp_path, "run")
    other = tiny_config(tmp_path, "other", overrides=["data.synthetic.train_size=180", "output.dir=" + str(tmp_path / "run")])

    def rank(comm):
        with pytest.raises(EveryRankError) as error:
            DistributedTrainer(config if comm.rank != 2 else other, comm=comm, reporter=Reporter())
        return str(error.value)

    messages = run_ranks(3, rank)
    assert all(m == messages[0] for m in messages)
    assert "rank 2 of 3 has another" in messages[0] and "rank 1" not in messages[0]
    assert not (tmp_path / "run").exists()


def test_a_rank_that_fails_to_set_up_stops_every_rank(tmp_path):
    def rank(comm):
        with pytest.raises(EveryRankError) as error:
            if comm.rank == 1:
                agree(comm, None, ("data/x.npz: no such file", 2))
            else:
                agree(comm, {"config": "a"})
        return str(error.value), error.value.exit_code

    assert run_ranks(2, rank) == [("rank 1 of 2: data/x.npz: no such file", 2)] * 2


# --------------------------------------------------------------------------- launch

def test_the_launcher_is_read_from_the_environment(monkeypatch):
    for rank_var, size_var in launch.LAUNCHER_VARIABLES:
        monkeypatch.delenv(rank_var, raising=False)
        monkeypatch.delenv(size_var, raising=False)
    assert (launch.launched_size(), launch.launched_rank(), launch.is_parallel_launch()) == (1, 0, False)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    assert (launch.launched_size(), launch.launched_rank(), launch.is_parallel_launch()) == (4, 3, True)
    two, sixteen = set(range(2)), set(range(16))
    assert launch.default_threads(two, [two] * 4)[0] == 1  # more ranks than cores: one thread each
    assert launch.default_threads(sixteen, [sixteen] * 2)[0] == 8  # shared cores, shared out
    assert launch.default_threads({4, 5, 6, 7}, [{0, 1, 2, 3}, {4, 5, 6, 7}])[0] == 4  # bound by mpiexec
    assert launch.default_threads(sixteen, [sixteen])[0] == 16


@pytest.mark.parametrize("rank", ["0", "1"])
def test_started_by_mpiexec_without_mpi4py_says_how_to_install_it(rank):
    code = ("import sys; sys.modules['mpi4py'] = None; sys.argv = ['nettrain', 'train', 'configs/quickstart.yaml']; "
            "from nettrain.cli import main; main()")
    env = {"PMI_SIZE": "2", "PMI_RANK": rank, "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    if rank == "0":
        assert done.stderr.count("\n") == 1 and "pip install 'nettrain[mpi]'" in done.stderr
    else:
        assert done.stderr == ""  # one line for the whole job, from rank 0


def test_one_process_never_imports_mpi4py(tmp_path):
    code = ("import sys, nettrain.cli as cli; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(cli.app, ['train', sys.argv[1], '-q']); "
            "assert r.exit_code == 0, r.output; assert 'mpi4py' not in sys.modules; print('ok')")
    config = tmp_path / "tiny.yaml"
    from tinyrun import tiny_config_dict, write_config

    write_config(config, tiny_config_dict(tmp_path / "run", epochs=1))
    done = subprocess.run([sys.executable, "-c", code, str(config)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "NETTRAIN_THREADS": "1"})
    assert done.stdout.strip().endswith("ok"), done.stderr


def test_a_run_stopped_and_resumed_on_the_same_rank_count_ends_bit_for_bit_as_one_never_stopped(tmp_path):
    from tinyrun import StopAfter

    whole = tiny_config(tmp_path, "whole", epochs=2)
    stopped = tiny_config(tmp_path, "stopped", epochs=2)

    def rank(comm):
        uninterrupted = DistributedTrainer(whole, comm=comm, reporter=Reporter())
        uninterrupted.fit(handle_signals=False)
        reporter = StopAfter(1, 3) if comm.is_root else Reporter()
        first = DistributedTrainer(stopped, comm=comm, reporter=reporter)
        reporter.trainer = first
        result = first.fit(handle_signals=False)
        resumed = DistributedTrainer(stopped, comm=comm, resume=tmp_path / "stopped", reporter=Reporter())
        resumed.fit(handle_signals=False)
        return result, uninterrupted.model.parameters(), resumed.model.parameters()

    for result, expected, params in run_ranks(2, rank):
        assert result.stopped == "interrupted" and result.cursor == (0, 4)  # every rank after the same step
        for name, value in expected.items():
            assert np.array_equal(value, params[name]), name


def test_a_nonfinite_loss_on_one_rank_stops_or_skips_on_every_rank_alike(tmp_path):
    config = tiny_config(tmp_path, "stop", augment=False)
    data = load_data(config.data, (1, 8, 8), seed=0)
    data.train.x[5, 0, 0, 0] = np.nan  # in one rank's slice of one batch

    def rank(comm):
        with pytest.raises(EveryRankError) as error:
            DistributedTrainer(config, comm=comm, reporter=Reporter(), data=data).fit(handle_signals=False)
        return str(error.value), error.value.exit_code

    messages = run_ranks(2, rank)
    assert messages[0] == messages[1] and messages[0][1] == 2
    assert messages[0][0].startswith("non-finite loss") and "the input batch itself holds NaN" in messages[0][0]
    assert "slice of the batch" in messages[0][0]
    skip = tiny_config(tmp_path, "skip", augment=False, on_nonfinite="skip")
    single = Trainer(tiny_config(tmp_path, "single", augment=False, on_nonfinite="skip"), data=data,
                     reporter=Reporter())
    single.fit(handle_signals=False)

    def skipping(comm):
        trainer = DistributedTrainer(skip, comm=comm, reporter=Reporter(), data=data)
        return trainer.fit(handle_signals=False).skipped_steps, trainer.model.parameters()

    for skipped, params in run_ranks(2, skipping):
        assert skipped == 2
        for name, value in single.model.parameters().items():
            assert relative(value, params[name]) < 1e-5, name


# --------------------------------------------------------------------------- the watcher of a rank

WATCHED = """
import os, signal, sys, time
from nettrain.distributed.supervise import supervise
supervise()
got = []
signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))  # before the line the test waits for
print("worker", os.getpid(), os.environ.get("NETTRAIN_WORKER"), flush=True)
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
deadline = time.monotonic() + 20
while not got and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(0.2)  # a second copy of the signal would arrive by now
print("signals", got, flush=True)
sys.exit(143 if got else 1)
"""


def watched(mode: str) -> subprocess.Popen:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PMI_RANK": "1", "PMI_SIZE": "2"}
    return subprocess.Popen([sys.executable, "-c", WATCHED, mode], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.skipif(sys.platform != "linux", reason="the watcher runs on Linux only")
def test_a_rank_killed_by_a_signal_is_named_by_its_watcher():
    proc = watched("kill")
    out, err = proc.communicate(timeout=60)
    worker = int(out.split()[1])
    assert worker != proc.pid and out.split()[2] == "1"  # the command ran in a forked worker
    assert proc.returncode == 128 + signal.SIGKILL
    assert err.splitlines() == [f"error: rank 1 of 2 (process {worker} on {__import__('socket').gethostname()}) "
                                "was killed by SIGKILL (the out-of-memory killer or kill -9); mpiexec stops the "
                                "other ranks, and the run folder keeps the last checkpoint saved before it"]


@pytest.mark.skipif(sys.platform != "linux", reason="the watcher runs on Linux only")
def test_the_watcher_passes_a_signal_on_once_and_exits_as_the_worker_did():
    proc = watched("wait")
    assert proc.stdout.readline().startswith("worker")
    os.killpg(proc.pid, signal.SIGTERM)  # as MPICH's mpiexec does: to the process group it started
    out, err = proc.communicate(timeout=60)
    assert out.split() == ["signals", "[15]"] and err == ""  # once, though both processes could have got it
    assert proc.returncode == 143
