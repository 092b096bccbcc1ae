"""The PyTorch twin of a nettrain model, and nettrain's weights in PyTorch's names and layouts.

:func:`torch_twin` builds, layer by layer, the ``torch.nn.Module`` that computes what a
built nettrain model computes; :func:`paired_arrays` pairs every nettrain parameter and
buffer with the twin's tensor (``how == "T"`` where torch stores the transpose: dense
and recurrent kernels). The parity tests and ``benchmarks/compare_torch.py`` use the
twin; ``nettrain export --format safetensors --layout torch`` writes
:func:`torch_state_dict`, which the twin loads with ``load_state_dict(strict=True)``.

torch is imported inside the functions only (``pip install 'nettrain[bench]'``).
"""

from __future__ import annotations

import numpy as np


def torch_twin(model):
    """A ``torch.nn.Module`` computing what the nettrain ``model`` computes (torch's own initial weights)."""
    import torch.nn as nn

    return nn.Sequential(*[torch_layer(layer) for layer in model.layers])


def torch_model(model):
    """The PyTorch twin of ``model`` with its weights copied."""
    net = torch_twin(model)
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
    if kind == "conv1d":
        _, _, left, right = layer.pad
        conv = nn.Conv1d(layer.in_shape[0], spec.filters, spec.kernel_size, spec.strides,
                         padding=left if left == right else 0, dilation=spec.dilation, bias=spec.use_bias)
        mods = [] if left == right else [nn.ConstantPad1d((left, right), 0.0)]
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
        if kind in ("conv2d", "conv1d"):
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
        if layer.type_name in ("conv2d", "conv1d", "dense", "batchnorm", "lstm", "gru", "simple_rnn"):
            yield path, layer


def _leaf_modules(net):
    import torch.nn as nn

    stateful = (nn.Conv2d, nn.Conv1d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)
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


def torch_state_dict(model) -> dict[str, np.ndarray]:
    """The twin's ``state_dict`` filled with ``model``'s arrays, as NumPy arrays in torch's layouts.

    Entries nettrain has no array for keep the twin's own values: BatchNorm's
    ``num_batches_tracked`` and the second (zero) bias torch adds to LSTM and SimpleRNN.
    Raises NotImplementedError for a layer without a torch equivalent.
    """
    net = torch_twin(model)
    state = net.state_dict(keep_vars=True)
    key_of = {id(tensor): key for key, tensor in state.items()}
    out = {key: tensor.detach().numpy().copy() for key, tensor in state.items()}
    for _, array, tensor, how in paired_arrays(model, net):
        value = array.T if how == "T" else array
        out[key_of[id(tensor)]] = np.ascontiguousarray(value, dtype=np.float32)
    return out
