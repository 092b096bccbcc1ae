"""Optimizers that update a model's parameter arrays in place, with PyTorch's update rules.

``build_optimizer(spec, model.parameters())`` creates the per-parameter state
(momentum, moment estimates) once; each ``step(params, grads)`` then writes into
the same arrays the layers hold (``p -= ...``, never ``params[k] = ...``).
Hyper-parameters are cast to each array's dtype so float32 training stays float32.

``state_dict()`` is a flat ``{"step": ..., "m/conv2d_1.kernel": ...}`` dict of
plain arrays (fit for ``np.savez``); loading it continues training bit for bit.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter

from . import kernels
from .errors import CheckpointError, validate_spec

# Parameters that L2 decay should leave alone when ``decay_bias_and_norm: false``:
# shrinking a bias or a BatchNorm scale/shift toward zero does not regularise anything.
NO_DECAY_SUFFIXES = (".bias", ".gamma", ".beta")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    decay_bias_and_norm: bool = True


class SGDSpec(_Spec):
    """p -= lr * v, with v = momentum * v + g (+ Nesterov look-ahead); g includes L2 decay."""

    type: Literal["sgd"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False


class AdamSpec(_Spec):
    """Adam with L2 decay added to the gradient (torch.optim.Adam)."""

    type: Literal["adam"] = "adam"
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)


class AdamWSpec(AdamSpec):
    """Adam with decoupled weight decay p *= 1 - lr * wd (torch.optim.AdamW)."""

    type: Literal["adamw"] = "adamw"
    weight_decay: float = Field(0.01, ge=0)


class RMSpropSpec(_Spec):
    """RMSprop as torch.optim.RMSprop: divide by sqrt(running mean of g^2) + eps."""

    type: Literal["rmsprop"] = "rmsprop"
    rho: float = Field(0.99, ge=0, lt=1, validation_alias=AliasChoices("rho", "alpha"))
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    centered: bool = False


def _name_to_mapping(value):
    # A bare name (``optimizer: adam``) is shorthand for ``{type: adam}``.
    return {"type": value} if isinstance(value, str) else value


OptimizerSpec = Annotated[
    Union[SGDSpec, AdamSpec, AdamWSpec, RMSpropSpec],
    Field(discriminator="type"),
    BeforeValidator(_name_to_mapping),
]
_OPTIMIZER_ADAPTER = TypeAdapter(OptimizerSpec)


def parse_optimizer(value, where: str = "optimizer") -> OptimizerSpec:
    """Validate an optimizer given as a name, a mapping or a spec; ConfigError names ``where``."""
    return validate_spec(_OPTIMIZER_ADAPTER, value, where)


def global_norm(grads: dict[str, np.ndarray]) -> float:
    """The L2 norm of all gradients together: sqrt of the sum of every array's squares.

    Each array's sum of squares is taken in its own dtype and the sum over arrays in
    float64. When float32 sums overflow although every gradient is finite, the norm is
    taken again in float64, so only a NaN or infinite gradient gives a non-finite norm.
    """
    total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
    if not math.isfinite(total) and all(np.isfinite(g).all() for g in grads.values()):
        total = math.sqrt(sum(float(np.vdot(g64, g64)) for g64 in (g.astype(np.float64) for g in grads.values())))
    return total


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float, norm: float | None = None) -> float:
    """Scale all gradients in place so their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping (as torch.nn.utils.clip_grad_norm_); ``norm`` is
    that norm when the caller has already taken it with :func:`global_norm`. A
    non-finite norm is returned without touching the gradients, so the caller can
    report it.
    """
    total = global_norm(grads) if norm is None else norm
    coef = max_norm / (total + 1e-6)
    if math.isfinite(total) and coef < 1.0:
        for g in grads.values():
            g *= g.dtype.type(coef)
    return total


class Optimizer:
    """Base class: per-parameter slots, the step counter and the state dict.

    Subclasses name their slots in ``slot_names`` and implement ``update``.
    """

    slot_names: tuple[str, ...] = ()

    def __init__(self, spec: _Spec, params: dict[str, np.ndarray]):
        self.spec = spec
        self.lr = spec.lr
        self.steps = 0
        decays = {k: spec.decay_bias_and_norm or not k.endswith(NO_DECAY_SUFFIXES) for k in params}
        self.weight_decay = {k: spec.weight_decay if decays[k] else 0.0 for k in params}
        self.slots = {s: {k: np.zeros_like(p) for k, p in params.items()} for s in self.active_slots()}

    def active_slots(self) -> tuple[str, ...]:
        return self.slot_names

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """Apply one update to every array in ``params`` (in place) from ``grads``."""
        self.steps += 1
        for k, p in params.items():
            slots = {s: self.slots[s][k] for s in self.slots}
            self.update(p, grads[k], slots, p.dtype.type, self.weight_decay[k])

    def update(self, p: np.ndarray, g: np.ndarray, slots: dict[str, np.ndarray], f, wd: float) -> None:
        """Update ``p`` and ``slots`` in place; ``f`` casts Python floats to ``p``'s dtype."""
        raise NotImplementedError

    # -- checkpoints ------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        state = {"step": np.array(self.steps, np.int64), "lr": np.array(self.lr, np.float64)}
        for s, arrays in self.slots.items():
            state.update({f"{s}/{k}": a.copy() for k, a in arrays.items()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise CheckpointError(
                f"optimizer state does not fit this {self.spec.type} optimizer and model "
                f"(missing {missing[:3]}, unexpected {extra[:3]}); was it saved with another config?"
            )
        for s, arrays in self.slots.items():
            for k, a in arrays.items():
                saved = state[f"{s}/{k}"]
                if saved.shape != a.shape:
                    raise CheckpointError(
                        f"optimizer state '{s}/{k}' has shape {saved.shape}, the model needs {a.shape}"
                    )
                a[...] = saved
        self.steps = int(state["step"])
        self.lr = float(state["lr"])


class SGD(Optimizer):
    slot_names = ("momentum",)

    def active_slots(self):
        return self.slot_names if self.spec.momentum else ()

    def update(self, p, g, slots, f, wd):
        if wd:
            g = g + f(wd) * p
        if self.spec.momentum:
            v = slots["momentum"]
            v *= f(self.spec.momentum)
            v += g
            g = g + f(self.spec.momentum) * v if self.spec.nesterov else v
        p -= f(self.lr) * g


class Adam(Optimizer):
    slot_names = ("m", "v")
    decoupled = False

    def update(self, p, g, slots, f, wd):
        s = self.spec
        kernels.backend(p.dtype).adam_update(p, g, slots["m"], slots["v"], self.lr, s.beta1, s.beta2, s.eps,
                                             self.steps, wd, self.decoupled)


class AdamW(Adam):
    decoupled = True


class RMSprop(Optimizer):
    slot_names = ("square_avg", "grad_avg", "momentum")

    def active_slots(self):
        return ("square_avg",) + ("grad_avg",) * self.spec.centered + ("momentum",) * (self.spec.momentum > 0)

    def update(self, p, g, slots, f, wd):
        s = self.spec
        if wd:
            g = g + f(wd) * p
        sq = slots["square_avg"]
        sq *= f(s.rho)
        sq += f(1 - s.rho) * g * g
        if s.centered:
            ga = slots["grad_avg"]
            ga += f(1 - s.rho) * (g - ga)
            rms = np.sqrt(sq - ga * ga) + f(s.eps)
        else:
            rms = np.sqrt(sq) + f(s.eps)
        if s.momentum:
            buf = slots["momentum"]
            buf *= f(s.momentum)
            buf += g / rms
            p -= f(self.lr) * buf
        else:
            p -= f(self.lr) * g / rms


_OPTIMIZERS: dict[type[_Spec], type[Optimizer]] = {SGDSpec: SGD, AdamSpec: Adam, AdamWSpec: AdamW, RMSpropSpec: RMSprop}


def build_optimizer(spec, params: dict[str, np.ndarray]) -> Optimizer:
    """The optimizer for a spec (or name / mapping) over ``params`` (name -> array, updated in place)."""
    spec = parse_optimizer(spec)
    return _OPTIMIZERS[type(spec)](spec, params)
