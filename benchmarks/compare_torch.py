"""nettrain against PyTorch on the same networks, side by side.

For each config this script builds the nettrain model from the YAML and the
same network in PyTorch (layer by layer, weights copied), checks that the two
agree (same trainable parameter count; eval-mode outputs equal within 1e-4),
then times training steps of both with the same batch, data, optimizer, dtype
(float32) and thread count, alternating step by step so that machine noise
hits both. Each framework runs in its own worker process, so that neither
one's thread pools spin while the other works and each one's peak memory
(RSS) is its own.

    python benchmarks/compare_torch.py                       # the five standard cases
    python benchmarks/compare_torch.py configs/fashion_cnn.yaml --steps 20
    python benchmarks/compare_torch.py --no-fast --format json

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
CASES = ["cifar_resnet", "alexnet_100", "fashion_cnn", "fashion_lstm", "fashion_gru"]
CHECK_BATCH = 8
TOLERANCE = 1e-4


# -- the PyTorch twin of a nettrain model --------------------------------------------
def torch_model(model):
    """A ``torch.nn.Module`` computing what the nettrain ``model`` computes, with its weights copied."""
    import torch.nn as nn

    net = nn.Sequential(*[torch_layer(layer) for layer in model.layers])
    copy_weights(model, net)
    return net


def torch_layer(layer):
    """The torch module for one nettrain layer (containers recursively)."""
    import torch.nn as nn

    kind = layer.type_name
    spec = layer.spec
    if kind == "conv2d":
        c = layer.in_shape[0]
        top, bottom, left, right = layer.pad
        symmetric = top == bottom and left == right
        conv = nn.Conv2d(c, spec.filters, layer.kernel, layer.stride, padding=(top, left) if symmetric else 0,
                         dilation=layer.dilation, bias=spec.use_bias)
        mods = [] if symmetric else [nn.ZeroPad2d((left, right, top, bottom))]
        return _with_activation(mods + [conv], spec.activation)
    if kind == "dense":
        return _with_activation([nn.Linear(layer.in_shape[-1], spec.units, bias=spec.use_bias)], spec.activation)
    if kind == "maxpool2d":
        top, bottom, left, right = layer.pad
        pool = nn.MaxPool2d(layer.pool, layer.stride)
        if not any(layer.pad):
            return pool
        return nn.Sequential(nn.ConstantPad2d((left, right, top, bottom), float("-inf")), pool)
    if kind == "avgpool2d":
        top, bottom, left, right = layer.pad
        if top != bottom or left != right:
            raise NotImplementedError(f"{layer.name}: asymmetric average-pool padding has no torch equivalent")
        return nn.AvgPool2d(layer.pool, layer.stride, padding=(top, left), count_include_pad=False)
    if kind == "global_avgpool2d":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if kind == "flatten":
        return nn.Flatten()
    if kind == "reshape":
        return torch_class("Reshape")(layer.out_shape)
    if kind == "dropout":
        return nn.Dropout(spec.rate)
    if kind == "batchnorm":
        if spec.scale != spec.center:
            raise NotImplementedError(f"{layer.name}: torch BatchNorm has both scale and shift or neither")
        features = layer.in_shape[0] if len(layer.in_shape) == 3 else layer.in_shape[-1]
        # Keras momentum: running = m * running + (1 - m) * batch; torch: (1 - m') * running + m' * batch
        options = dict(eps=spec.epsilon, momentum=1 - spec.momentum, affine=spec.scale)
        if len(layer.in_shape) == 3:
            return nn.BatchNorm2d(features, **options)
        if len(layer.in_shape) == 2:
            return torch_class("FeaturesLast")(nn.BatchNorm1d(features, **options))
        return nn.BatchNorm1d(features, **options)
    if kind in ACTIVATION_KINDS:
        return activation_module(spec.activation if kind == "activation" else kind, spec)
    if kind == "residual":
        return torch_class("TorchResidual")(layer)
    if kind in ("lstm", "gru", "simple_rnn"):
        return torch_class("TorchRecurrent")(layer)
    raise NotImplementedError(f"no torch equivalent for layer type {kind!r}")


ACTIVATION_KINDS = ("relu", "leaky_relu", "elu", "tanh", "sigmoid", "softmax", "activation")


def activation_module(name, spec=None):
    import torch.nn as nn

    alpha = getattr(spec, "alpha", None)
    return {
        "linear": lambda: nn.Identity(),
        "relu": lambda: nn.ReLU(),
        "tanh": lambda: nn.Tanh(),
        "sigmoid": lambda: nn.Sigmoid(),
        "softmax": lambda: nn.Softmax(dim=-1),
        "leaky_relu": lambda: nn.LeakyReLU(0.3 if alpha is None else alpha),
        "elu": lambda: nn.ELU(1.0 if alpha is None else alpha),
    }[name]()


def _with_activation(mods, activation):
    import torch.nn as nn

    if activation:
        mods = mods + [activation_module(activation)]
    return mods[0] if len(mods) == 1 else nn.Sequential(*mods)


def _torch_classes():
    import torch
    import torch.nn as nn

    class Reshape(nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.shape = tuple(shape)

        def forward(self, x):
            return x.reshape(x.shape[0], *self.shape)

    class FeaturesLast(nn.Module):
        """Apply a (N, C, L) module to (N, T, F) sequences, features last."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.transpose(1, 2)).transpose(1, 2)

    class TorchResidual(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.kind = layer.spec.shortcut
            self.stride = layer.stride
            self.body = nn.Sequential(*[torch_layer(child) for child in layer.body_layers])
            self.shortcut = nn.Sequential(*[torch_layer(child) for child in layer.shortcut_layers])
            self.channel_pad = getattr(layer, "channel_pad", (0, 0))
            self.act = activation_module(layer.spec.activation) if layer.spec.activation else nn.Identity()

        def forward(self, x):
            if self.kind == "projection":
                short = self.shortcut(x)
            elif self.kind == "zero_pad":
                short = x[:, :, :: self.stride, :: self.stride]
                short = nn.functional.pad(short, (0, 0, 0, 0, *self.channel_pad))
            else:
                short = x
            return self.act(self.body(x) + short)

    class TorchRecurrent(nn.Module):
        """nn.LSTM / nn.GRU / nn.RNN, batch first, returning the last state or every state."""

        def __init__(self, layer):
            super().__init__()
            cls = {"lstm": nn.LSTM, "gru": nn.GRU, "simple_rnn": nn.RNN}[layer.type_name]
            self.rnn = cls(layer.in_shape[-1], layer.spec.units, batch_first=True)
            self.sequences = layer.spec.return_sequences
            if layer.type_name != "gru":
                # nettrain's LSTM/RNN have one bias; torch adds two: hold the second at zero
                self.rnn.bias_hh_l0.requires_grad_(False)
                with torch.no_grad():
                    self.rnn.bias_hh_l0.zero_()

        def forward(self, x):
            out, _ = self.rnn(x)
            return out if self.sequences else out[:, -1]

    return Reshape, FeaturesLast, TorchResidual, TorchRecurrent


_CLASSES: dict = {}


def torch_class(name: str):
    """Reshape, FeaturesLast, TorchResidual or TorchRecurrent; defined on first use, so that
    importing this file needs no torch."""
    if not _CLASSES:
        _CLASSES.update(zip(("Reshape", "FeaturesLast", "TorchResidual", "TorchRecurrent"), _torch_classes()))
    return _CLASSES[name]


def paired_arrays(model, net):
    """[(nettrain name, nettrain array, torch tensor, how)] for every parameter and buffer.

    ``how`` is "T" where torch stores the transpose (dense and recurrent kernels).
    """
    pairs = []
    modules = list(_leaf_modules(net))
    layers = list(_leaf_layers(model))
    if len(modules) != len(layers):
        raise AssertionError(f"{len(layers)} nettrain layers with state but {len(modules)} torch modules")
    for (path, layer), module in zip(layers, modules):
        kind = layer.type_name
        if kind == "conv2d":
            pairs.append((f"{path}.kernel", layer.params["kernel"], module.weight, ""))
            if "bias" in layer.params:
                pairs.append((f"{path}.bias", layer.params["bias"], module.bias, ""))
        elif kind == "dense":
            pairs.append((f"{path}.kernel", layer.params["kernel"], module.weight, "T"))
            if "bias" in layer.params:
                pairs.append((f"{path}.bias", layer.params["bias"], module.bias, ""))
        elif kind == "batchnorm":
            if "gamma" in layer.params:
                pairs.append((f"{path}.gamma", layer.params["gamma"], module.weight, ""))
                pairs.append((f"{path}.beta", layer.params["beta"], module.bias, ""))
            pairs.append((f"{path}.running_mean", layer.buffers["running_mean"], module.running_mean, ""))
            pairs.append((f"{path}.running_var", layer.buffers["running_var"], module.running_var, ""))
        else:  # recurrent
            rnn = module.rnn
            pairs.append((f"{path}.kernel", layer.params["kernel"], rnn.weight_ih_l0, "T"))
            pairs.append((f"{path}.recurrent_kernel", layer.params["recurrent_kernel"], rnn.weight_hh_l0, "T"))
            pairs.append((f"{path}.bias", layer.params["bias"], rnn.bias_ih_l0, ""))
            if "recurrent_bias" in layer.params:
                pairs.append((f"{path}.recurrent_bias", layer.params["recurrent_bias"], rnn.bias_hh_l0, ""))
    return pairs


def _leaf_layers(model):
    """nettrain layers that hold arrays, in the order their torch modules appear."""
    for path, layer in model.named_layers():
        if layer.type_name in ("conv2d", "dense", "batchnorm", "lstm", "gru", "simple_rnn"):
            yield path, layer


def _leaf_modules(net):
    import torch.nn as nn

    stateful = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)
    recurrent = torch_class("TorchRecurrent")
    for module in net.modules():
        if isinstance(module, stateful) or isinstance(module, recurrent):
            yield module


def copy_weights(model, net):
    import torch

    with torch.no_grad():
        for _, array, tensor, how in paired_arrays(model, net):
            value = array.T if how == "T" else array
            tensor.copy_(torch.from_numpy(value.astype("float32").copy()))


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


def peak_rss_mb() -> float:
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
            reply(peak_rss_mb())
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
            for i in range(args.warmup + args.steps):
                # ABBA order: neither framework always runs right after the other
                for name, worker in ((("nettrain", nt), ("torch", th)) if i % 2 == 0 else (("torch", th), ("nettrain", nt))):
                    elapsed = worker.ask(command)
                    if i >= args.warmup:
                        times[name][command].append(elapsed)
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
        "nettrain_peak_mb": rss["nettrain"],
        "torch_peak_mb": rss["torch"],
        "memory_ratio": rss["nettrain"] / rss["torch"],
        "torch_version": th.info["torch"],
    }


def print_table(rows) -> None:
    header = ("config", "kernels", "nettrain img/s", "torch img/s", "ratio", "fwd ratio", "nettrain MB", "torch MB",
              "mem ratio")
    lines = [header]
    for r in rows:
        lines.append((r["config"], r["kernels"], f"{r['nettrain_img_per_s']:.1f}", f"{r['torch_img_per_s']:.1f}",
                      f"{r['ratio']:.2f}", f"{r['forward_ratio']:.2f}", f"{r['nettrain_peak_mb']:.0f}",
                      f"{r['torch_peak_mb']:.0f}", f"{r['memory_ratio']:.2f}"))
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
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for each framework (nettrain: NETTRAIN_THREADS; torch: set_num_threads)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--fast", dest="use_fast", action="store_true", default=None, help="nettrain with numba")
    parser.add_argument("--no-fast", dest="use_fast", action="store_false", help="nettrain with NumPy only")
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
    sys.path.insert(0, str(ROOT))
    rows = []
    for case in args.configs:
        row = compare(case, args)
        rows.append(row)
        if args.format == "table":
            print(f"{case}: checked ({row['params']:,} params, outputs within {row['max_output_difference']:.1e})",
                  file=sys.stderr)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
