"""nettrain against PyTorch on the same networks, side by side.

For each config this script builds the nettrain model from the YAML and the
same network in PyTorch (layer by layer, weights copied), checks that the two
agree (same trainable parameter count; eval-mode outputs equal within 1e-4),
then times training steps of both with the same batch, data, optimizer, dtype
(float32) and thread count, alternating in short blocks of steps (ABBA) so that
machine noise hits both; each block's first step is not timed (see ``blocks``).
Each framework runs in its own worker process, so that neither one's thread
pools spin while the other works and each one's peak memory (RSS) is its own.

    python benchmarks/compare_torch.py                       # the five standard cases
    python benchmarks/compare_torch.py configs/fashion_cnn.yaml --steps 20
    python benchmarks/compare_torch.py --no-fast --format json
    python benchmarks/compare_torch.py --repeat 3            # medians and ranges of 3 runs

With ``--repeat N`` every case is compared N times with fresh worker processes (round by
round over the cases, so that a busy spell hits all of them), and the table gives the
median ratios, their ranges, and each framework's spread between runs: (max - min) / median
of its training img/s.

The nettrain worker keeps freed memory for reuse as nettrain's CLI does (:mod:`nettrain.heap`);
PyTorch runs with glibc's defaults, as a plain ``python`` script does, unless
``--torch-keeps-memory`` gives it the same settings.

Needs the ``bench`` extra (``pip install -e '.[bench]'``: torch==2.13.0).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# the twin and its weight mapping live in the library, for `nettrain export --layout torch`
from nettrain.export.torch_layout import copy_weights, paired_arrays, torch_model  # noqa: E402,F401
CASES = ["cifar_resnet", "alexnet_100", "fashion_cnn", "fashion_lstm", "fashion_gru"]
CHECK_BATCH = 8
TOLERANCE = 1e-4


def torch_optimizer(train_spec, model, net):
    """The torch optimizer of the config's optimizer, with the same parameter groups for weight decay."""
    import torch

    spec = train_spec.optimizer
    decay, no_decay = [], []
    for name, _, tensor, _ in paired_arrays(model, net):
        if tensor.requires_grad and isinstance(tensor, torch.nn.Parameter):
            skip = not spec.decay_bias_and_norm and name.endswith((".bias", ".gamma", ".beta"))
            (no_decay if skip else decay).append(tensor)
    groups = [{"params": decay, "weight_decay": spec.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if spec.type == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov)
    if spec.type in ("adam", "adamw"):
        cls = torch.optim.Adam if spec.type == "adam" else torch.optim.AdamW
        return cls(groups, lr=spec.lr, betas=(spec.beta1, spec.beta2), eps=spec.eps)
    return torch.optim.RMSprop(groups, lr=spec.lr, alpha=spec.rho, eps=spec.eps, momentum=spec.momentum,
                               centered=spec.centered)


def torch_loss(loss_spec):
    import torch.nn.functional as F

    if loss_spec.type == "softmax_cross_entropy":
        smoothing = loss_spec.label_smoothing
        return lambda z, y: F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1), label_smoothing=smoothing)
    if loss_spec.type == "mse":
        return F.mse_loss
    return F.binary_cross_entropy_with_logits


# -- workers ---------------------------------------------------------------------------
def config_path(case: str) -> Path:
    path = Path(case)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return ROOT / "configs" / f"{case}.yaml"


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class NettrainWorker:
    def __init__(self, config, batch_size, seed, use_fast):
        from nettrain import kernels
        from nettrain.bench import random_batch
        from nettrain.builder import build_model
        from nettrain.training.step import TrainStep

        if use_fast is not None:
            kernels.set_compiled(use_fast)
        self.kernels = kernels.kernel_path()
        self.model = build_model(config, seed=seed)
        self.x, self.y = random_batch(self.model, config.train.loss.type, batch_size, _rng(seed))
        self.step_fn = TrainStep.from_spec(self.model, config.train)

    def outputs(self, x):
        return self.model.forward(x, training=False)

    def step(self):
        self.step_fn(self.x, self.y)

    def forward(self):
        self.model.forward(self.x, training=False)

    def info(self):
        return {"params": self.model.param_count(), "kernels": self.kernels}


class TorchWorker:
    def __init__(self, config, batch_size, seed, threads):
        import torch

        from nettrain.bench import random_batch
        from nettrain.builder import build_model

        torch.set_num_threads(threads)
        model = build_model(config, seed=seed)
        self.net = torch_model(model)
        self.optimizer = torch_optimizer(config.train, model, self.net)
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        x, y = random_batch(model, config.train.loss.type, batch_size, _rng(seed))
        del model  # only the torch copy stays, so the peak memory is torch's own
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.loss = torch_loss(config.train.loss)
        self.clip = config.train.clip_grad_norm
        self.torch = torch

    def outputs(self, x):
        self.net.eval()
        with self.torch.no_grad():
            return self.net(self.torch.from_numpy(x)).numpy()

    def step(self):
        self.net.train()
        self.optimizer.zero_grad(set_to_none=False)
        self.loss(self.net(self.x), self.y).backward()
        if self.clip:
            self.torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()

    def forward(self):
        self.net.eval()
        with self.torch.no_grad():
            self.net(self.x)

    def info(self):
        return {"params": sum(p.numel() for p in self.params), "torch": self.torch.__version__}


def _rng(seed):
    import numpy as np

    return np.random.default_rng(seed)


def worker_main(args) -> None:
    """Serve one framework: read commands on stdin, answer one JSON line each."""
    import numpy as np

    from nettrain.config import load_config

    config = load_config(config_path(args.config))
    if args.worker == "nettrain" or args.torch_keeps_memory:
        from nettrain.heap import keep_freed_memory

        keep_freed_memory()  # what the CLI does
    if args.worker == "torch":
        worker = TorchWorker(config, args.batch_size, args.seed, args.threads)
    else:
        worker = NettrainWorker(config, args.batch_size, args.seed, args.use_fast)
    reply = lambda value: print(json.dumps(value), flush=True)  # noqa: E731
    reply(worker.info())
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "outputs":
            x = np.load(rest[0])
            np.save(rest[1], worker.outputs(x))
            reply("ok")
        elif command in ("step", "forward"):
            start = time.perf_counter()
            getattr(worker, command)()
            reply(time.perf_counter() - start)
        elif command == "rss":
            reply(peak_rss_mib())
        else:
            return


class Worker:
    """The parent's handle on a worker process."""

    def __init__(self, kind, case, args):
        env = dict(os.environ)
        # nettrain's own pool runs its parallel work, each thread with a one-thread BLAS
        # (what the CLI does); torch gets the same number of threads for its own pool
        blas = "1" if kind == "nettrain" else str(args.threads)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env[var] = blas
        env["NETTRAIN_THREADS"] = str(args.threads)
        command = [sys.executable, __file__, "--worker", kind, str(config_path(case)), "--batch-size",
                   str(args.batch_size), "--seed", str(args.seed), "--threads", str(args.threads)]
        if args.use_fast is not None:
            command.append("--fast" if args.use_fast else "--no-fast")
        if args.torch_keeps_memory:
            command.append("--torch-keeps-memory")
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=ROOT)
        self.info = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.proc.args[3]} for {self.proc.args[4]} died (exit {self.proc.wait()})")
        return json.loads(line)

    def ask(self, *words):
        self.proc.stdin.write(" ".join(map(str, words)) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait()


def check_agreement(nt: Worker, th: Worker, input_shape, seed) -> float:
    """Max |difference| of eval-mode outputs on one random batch; raises if params or outputs differ."""
    import numpy as np

    if nt.info["params"] != th.info["params"]:
        raise AssertionError(f"parameter counts differ: nettrain {nt.info['params']}, torch {th.info['params']}")
    with tempfile.TemporaryDirectory() as tmp:
        x = np.random.default_rng(seed + 1).standard_normal((CHECK_BATCH, *input_shape), dtype=np.float32)
        np.save(f"{tmp}/x.npy", x)
        nt.ask("outputs", f"{tmp}/x.npy", f"{tmp}/nt.npy")
        th.ask("outputs", f"{tmp}/x.npy", f"{tmp}/th.npy")
        a, b = np.load(f"{tmp}/nt.npy"), np.load(f"{tmp}/th.npy")
    diff = float(np.max(np.abs(a - b)))
    if a.shape != b.shape or not np.allclose(a, b, rtol=TOLERANCE, atol=TOLERANCE):
        raise AssertionError(f"outputs differ: shapes {a.shape} / {b.shape}, max |difference| {diff:.3g}")
    return diff


def blocks(steps: int, size: int) -> list[int]:
    """The timed steps as blocks of ``size`` (the last one shorter), each run by one framework in turn.

    Each block starts with one more step that is not timed. A framework that has just finished
    disturbs the next one's first step: PyTorch's OpenMP threads (libgomp) spin for about 10 ms of
    CPU after each parallel region before they sleep, and the other framework's threads then
    share the cores with them; and after the other framework's turn a framework's caches are cold.
    Timing only the steps after it gives each its own steady pace, as when it trains alone.
    """
    size = max(1, size)
    return [min(size, steps - start) for start in range(0, steps, size)]


def compare(case: str, args) -> dict:
    import statistics

    from nettrain.builder import build_model
    from nettrain.config import load_config

    config = load_config(config_path(case))
    input_shape = build_model(config).input_shape
    nt, th = Worker("nettrain", case, args), Worker("torch", case, args)
    try:
        diff = check_agreement(nt, th, input_shape, args.seed)
        times = {"nettrain": {"step": [], "forward": []}, "torch": {"step": [], "forward": []}}
        for command in ("step", "forward"):
            for worker in (nt, th):
                for _ in range(args.warmup):
                    worker.ask(command)
            for i, block in enumerate(blocks(args.steps, args.block)):
                # ABBA order of the blocks: neither framework always runs right after the other
                for name, worker in ((("nettrain", nt), ("torch", th)) if i % 2 == 0 else (("torch", th), ("nettrain", nt))):
                    worker.ask(command)  # the block's first step, untimed: see blocks()
                    times[name][command] += [worker.ask(command) for _ in range(block)]
        rss = {"nettrain": nt.ask("rss"), "torch": th.ask("rss")}
    finally:
        nt.close()
        th.close()
    rate = {name: {c: args.batch_size / statistics.median(t) for c, t in by.items()} for name, by in times.items()}
    return {
        "config": case,
        "batch_size": args.batch_size,
        "kernels": nt.info["kernels"],
        "threads": args.threads,
        "params": nt.info["params"],
        "max_output_difference": diff,
        "nettrain_img_per_s": rate["nettrain"]["step"],
        "torch_img_per_s": rate["torch"]["step"],
        "ratio": rate["nettrain"]["step"] / rate["torch"]["step"],
        "nettrain_forward_img_per_s": rate["nettrain"]["forward"],
        "torch_forward_img_per_s": rate["torch"]["forward"],
        "forward_ratio": rate["nettrain"]["forward"] / rate["torch"]["forward"],
        "nettrain_peak_mib": rss["nettrain"],
        "torch_peak_mib": rss["torch"],
        "memory_ratio": rss["nettrain"] / rss["torch"],
        "torch_version": th.info["torch"],
    }


def summarise(runs: list[dict]) -> dict:
    """One row from several runs of one case: medians, ratio ranges, each framework's spread."""
    import statistics

    row = dict(runs[-1])
    for key in ("nettrain_img_per_s", "torch_img_per_s", "ratio", "nettrain_forward_img_per_s",
                "torch_forward_img_per_s", "forward_ratio", "nettrain_peak_mib", "torch_peak_mib", "memory_ratio"):
        values = [r[key] for r in runs]
        row[key] = statistics.median(values)
        if key in ("ratio", "forward_ratio"):
            row[key + "_range"] = [min(values), max(values)]
    for name in ("nettrain", "torch"):
        for kind in ("", "forward_"):
            values = [r[f"{name}_{kind}img_per_s"] for r in runs]
            row[f"{name}_{kind}spread"] = (max(values) - min(values)) / statistics.median(values)
    row["max_output_difference"] = max(r["max_output_difference"] for r in runs)
    row["runs"] = len(runs)
    return row


def print_table(rows) -> None:
    header = ("config", "kernels", "nettrain img/s", "torch img/s", "ratio", "fwd ratio", "nettrain MiB", "torch MiB",
              "mem ratio")
    repeated = bool(rows) and "runs" in rows[0]
    if repeated:
        header += ("ratio range", "fwd range", "spread nettrain / torch", "fwd spread nettrain / torch")
    lines = [header]
    for r in rows:
        line = (r["config"], r["kernels"], f"{r['nettrain_img_per_s']:.1f}", f"{r['torch_img_per_s']:.1f}",
                f"{r['ratio']:.2f}", f"{r['forward_ratio']:.2f}", f"{r['nettrain_peak_mib']:.0f}",
                f"{r['torch_peak_mib']:.0f}", f"{r['memory_ratio']:.2f}")
        if repeated:
            line += tuple(f"{lo:.2f}–{hi:.2f}" for lo, hi in (r["ratio_range"], r["forward_ratio_range"]))
            line += (f"{r['nettrain_spread']:.2f} / {r['torch_spread']:.2f}",
                     f"{r['nettrain_forward_spread']:.2f} / {r['torch_forward_spread']:.2f}")
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines[1:]:
        print("| " + " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) + " |")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("configs", nargs="*", default=CASES, help="config names in configs/ or YAML paths")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per framework")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--block", type=int, default=5,
                        help="timed steps in a row per framework, after one untimed step (blocks alternate ABBA)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for each framework (nettrain: NETTRAIN_THREADS; torch: set_num_threads)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="compare each case this many times, fresh workers each time")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--fast", dest="use_fast", action="store_true", default=None, help="nettrain with numba")
    parser.add_argument("--no-fast", dest="use_fast", action="store_false", help="nettrain with NumPy only")
    parser.add_argument("--torch-keeps-memory", action="store_true",
                        help="run PyTorch with the malloc settings nettrain's CLI uses (nettrain.heap) too")
    parser.add_argument("--worker", choices=("nettrain", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.config = args.configs[0]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return 0
    runs = {case: [] for case in args.configs}
    for round_ in range(args.repeat):
        for case in args.configs:
            row = compare(case, args)
            runs[case].append(row)
            if args.format == "table":
                print(f"{case}: checked ({row['params']:,} params, outputs within {row['max_output_difference']:.1e});"
                      f" run {round_ + 1}: ratio {row['ratio']:.2f}, fwd ratio {row['forward_ratio']:.2f}", file=sys.stderr)
    rows = [summarise(r) if args.repeat > 1 else r[0] for r in runs.values()]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
