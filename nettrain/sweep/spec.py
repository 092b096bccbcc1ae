"""The sweep spec: its schema, loading with ``file:line`` errors, and the checks against the base config.

A spec is one YAML file::

    name: quickstart_lr
    base: ../quickstart.yaml              # relative to this file
    overrides: {train.epochs: 4}          # fixed overrides, --set style paths
    space:                                # dotted config paths -> a domain
      train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}
      model.layers[9].units: {choice: [32, 64, 128]}
      train.batch_size: {grid: [32, 64]}
    trials: 8                             # samples (each grid point counts once per sample)
    metric: val_accuracy                  # default: the base config's output.monitor and mode
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # or {type: fifo}
    search: random                        # random | optuna
    concurrent: 2
    resources: {cpus: 1}                  # per trial; sets the trial's NETTRAIN_THREADS

:func:`load_spec` reads it like a config (``--set`` overrides of the spec itself,
unknown keys with did-you-mean, every problem as ``file:line: path: message``);
:func:`plan_sweep` then checks every path of ``overrides`` and ``space`` against
the base config, with the ends of each range and every listed value, so that a
mistake is reported before Ray starts. Nothing here imports Ray.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, PrivateAttr,
                      ValidationError, field_validator, model_validator)

from ..config import load_config
from ..config.messages import suggest
from ..config.overrides import parse_override
from ..config.yamltree import Node, Where, format_path, from_plain, node_at, parse_yaml, to_plain, where_text
from ..errors import ConfigError

MAX_SPEC_BYTES = 1024 * 1024
DOMAIN_KINDS = ("uniform", "quniform", "loguniform", "randint", "lograndint", "choice", "grid")
METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
TOPK_METRIC = re.compile(r"^val_top[1-9][0-9]*_accuracy$")
SWEEP_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
SECTIONS_OF_PATHS = ("space", "overrides")  # their keys are config paths, written as one key


# ============================================================================ schema
class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Domain(StrictModel):
    """One dimension of the search space: exactly one of the keys.

    Ranges include both ends (``randint: [1, 4]`` gives 1, 2, 3 or 4); ``quniform:
    [low, high, q]`` rounds to multiples of q; ``grid`` tries every value in every sample.
    """

    uniform: Optional[tuple[float, float]] = None
    quniform: Optional[tuple[float, float, PositiveFloat]] = None
    loguniform: Optional[tuple[PositiveFloat, PositiveFloat]] = None
    randint: Optional[tuple[int, int]] = None
    lograndint: Optional[tuple[PositiveInt, PositiveInt]] = None
    choice: Optional[list[Any]] = Field(None, min_length=1)
    grid: Optional[list[Any]] = Field(None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> "Domain":
        given = [k for k in DOMAIN_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(f"give exactly one of {', '.join(DOMAIN_KINDS)} (found: {found})")
        args = self.args
        if self.kind not in ("choice", "grid") and not args[0] < args[1]:
            raise ValueError(f"{self.kind}: the low end must be below the high end, got [{args[0]}, {args[1]}]")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DOMAIN_KINDS if getattr(self, k) is not None)

    @property
    def args(self):
        return getattr(self, self.kind)

    def edge_values(self) -> list:
        """Values a trial may get that are checked before Ray starts: both ends, or every listed value."""
        if self.kind in ("choice", "grid"):
            return list(self.args)
        return [self.args[0], self.args[1]]

    def describe(self) -> str:
        return f"{self.kind} {yaml_value(list(self.args))}"


class AshaSpec(StrictModel):
    """Asynchronous successive halving: at epochs grace_period * reduction_factor^k, stop all but the best."""

    type: Literal["asha"]
    grace_period: PositiveInt = 1
    reduction_factor: float = Field(2.0, gt=1)
    max_t: Optional[PositiveInt] = None  # default: the most epochs a trial trains


class FifoSpec(StrictModel):
    """Every trial trains to its end."""

    type: Literal["fifo"]


SchedulerSpec = Annotated[Union[AshaSpec, FifoSpec], Field(discriminator="type")]


class ResourcesSpec(StrictModel):
    cpus: PositiveInt = 1


class SweepOutputSpec(StrictModel):
    """``dir`` left out: ``<root>/<name>-<timestamp>``."""

    dir: Optional[str] = None
    root: str = "runs"


class SweepSpec(StrictModel):
    """A validated sweep spec; ``source_name`` and ``location()`` say where it came from."""

    name: Optional[str] = None
    description: Optional[str] = None
    base: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Domain] = Field(min_length=1)
    trials: PositiveInt = 1
    metric: Optional[str] = None
    mode: Optional[Literal["min", "max"]] = None
    scheduler: SchedulerSpec = Field(default_factory=lambda: FifoSpec(type="fifo"))
    search: Literal["random", "optuna"] = "random"
    concurrent: Optional[PositiveInt] = None  # default: as many as the CPUs allow
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    seed: NonNegativeInt = 0
    output: SweepOutputSpec = Field(default_factory=SweepOutputSpec)

    _source_path: Optional[Path] = PrivateAttr(None)
    _source_name: str = PrivateAttr("<sweep>")
    _overrides: tuple[str, ...] = PrivateAttr(())
    _tree: Optional[Node] = PrivateAttr(None)

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_by_name(cls, value):
        return {"type": value} if isinstance(value, str) else value  # scheduler: fifo

    @field_validator("name")
    @classmethod
    def _usable_in_paths(cls, value):
        if value is not None and not SWEEP_NAME.match(value):
            raise ValueError("a sweep name may hold only letters, digits, _, - and . (it names the sweep folder)")
        return value

    @property
    def source_path(self) -> Path | None:
        return self._source_path

    @property
    def source_name(self) -> str:
        return self._source_name

    @property
    def overrides_applied(self) -> tuple[str, ...]:
        """The ``--set`` strings applied to the spec, in order."""
        return self._overrides

    def location(self, path) -> str:
        """``file:line: dotted.path`` of a value of the spec."""
        if self._tree is None:
            return f"{self._source_name}: {format_path(tuple(path))}"
        node, rest = node_at(self._tree, tuple(path))
        return where_text(node.where, self._source_name, rest)


def _keys_at(path: tuple, data: Any) -> list[str] | None:
    """The keys a mapping of the spec may have at ``path`` (None: any key goes)."""
    models = {(): SweepSpec, ("resources",): ResourcesSpec, ("output",): SweepOutputSpec}
    if path in models:
        return list(models[path].model_fields)
    if path == ("scheduler",):
        kind = data.get("scheduler", {}).get("type") if isinstance(data, dict) and isinstance(
            data.get("scheduler"), dict) else None
        return list((AshaSpec if kind == "asha" else FifoSpec if kind == "fifo" else AshaSpec).model_fields)
    if len(path) == 2 and path[0] == "space":
        return list(Domain.model_fields)
    return None


def yaml_value(value: Any) -> str:
    """A value as the right-hand side of ``--set path=value`` (YAML flow style, floats that read back as floats)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes, list, dict)):
        value = value.item()  # NumPy scalars from Tune's samplers
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
    return text[:-3].rstrip() if text.endswith("\n...") else text


# ============================================================================ loading
def read_spec_text(path: Path, source: str) -> str:
    if not path.is_file():
        raise ConfigError(f"{source}: no such file" if not path.exists() else f"{source}: is a directory, not a sweep spec")
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise ConfigError(f"{source}: {size / 2**20:.1f} MiB is too large for a sweep spec (the limit is 1 MiB)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: not UTF-8 text (byte {e.start}); is this a sweep spec?") from None
    except OSError as e:
        raise ConfigError(f"{source}: cannot read ({e.strerror})") from None
    if all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()):
        raise ConfigError(f"{source}: the file is empty; a sweep spec needs at least base: and space:")
    return text


def apply_spec_override(tree: Node, text: str, source: str) -> None:
    """``--set`` on the spec: ``trials=4``, ``scheduler.type=fifo``, ``space.train.optimizer.lr={choice: [...]}``."""
    path, value = parse_override(text, source)
    if path[0] in SECTIONS_OF_PATHS and len(path) > 1:
        path = (path[0], format_path(path[1:]))  # the rest is one key: a config path
    origin = f"--set {text}"
    node = tree
    for i, key in enumerate(path):
        here, last = path[:i], i == len(path) - 1
        if here == ("scheduler",) and isinstance(node.value, str):
            node.value = {"type": Node(node.value, node.where)}  # scheduler: asha -> {type: asha}
        if isinstance(key, int) or not node.is_map():
            raise ConfigError(f"{source}: {origin}: {format_path(here)} is not a mapping, so it has no '{key}'")
        new = from_plain(value, Where(path, origin=origin)) if last else Node({}, Where(path[:i + 1], origin=origin))
        if key not in node.value:
            keys = _keys_at(here, to_plain(tree))
            if keys is not None and key not in keys:
                what = "keys" if here else "sections"
                raise ConfigError(f"{source}: {origin}: {format_path(path[:i + 1])} does not exist{suggest(key, keys, what)}")
            node.value[key] = new
        elif last:
            node.value[key] = new
        node = node.value[key]


def _located(err: dict, tree: Node) -> tuple[Node, tuple, tuple]:
    """The deepest node an error's location reaches, its path, and the part of the location below it."""
    node, path, rest = tree, (), ()
    for el in err["loc"]:
        if rest:
            rest += (el,)
        elif node.is_map() and isinstance(el, str) and el in node.value:
            node, path = node.value[el], path + (el,)
        elif node.is_list() and isinstance(el, int) and 0 <= el < len(node.value):
            node, path = node.value[el], path + (el,)
        elif node.is_map() and el == node.scalar("type"):
            continue  # the tag pydantic puts in a tagged union's location
        else:
            rest = (el,)
    return node, path, rest


def validation_problems(error: ValidationError, tree: Node, source: str) -> list[str]:
    """One ``file:line: path: message`` line per pydantic error of a spec."""
    data = to_plain(tree)
    problems = []
    for err in error.errors():
        node, path, rest = _located(err, tree)
        kind, value = err["type"], err.get("input")
        if kind == "extra_forbidden":
            key, parent = (rest[-1], path) if rest else (path[-1], path[:-1])
            message = f"unknown key '{key}'" + suggest(key, [k for k in _keys_at(parent, data) or [] if k != "type"], "keys")
            rest = ()
        elif kind == "missing":
            message = f"missing required key '{rest[-1] if rest else path[-1]}'"
            rest = rest[:-1]
        elif kind == "union_tag_invalid":
            tags = re.findall(r"'([^']*)'", (err.get("ctx") or {}).get("expected_tags", ""))
            tag = (err.get("ctx") or {}).get("tag")
            node = node.get("type") or node
            message = f"unknown {path[-1] if path else 'scheduler'} type {tag!r}" + suggest(tag, tags, "types")
        elif kind == "union_tag_not_found":
            message = "missing 'type' (asha or fifo)"
        else:
            message = err["msg"].removeprefix("Value error, ")
            if "input" in err and not isinstance(value, dict):
                message += f", got {yaml_value(value) if _plain(value) else type(value).__name__}"
            if kind in ("model_type", "model_attributes_type", "dict_type") and len(path) == 2 and path[0] == "space":
                message = f"expected a domain like {{loguniform: [1.0e-4, 1.0e-2]}} or {{choice: [32, 64]}}, got {yaml_value(value)}"
        problems.append(f"{where_text(node.where, source, rest)}: {message}")
    return problems


def _plain(value) -> bool:
    try:
        yaml.safe_dump(value)
        return True
    except yaml.YAMLError:
        return False


def _line_of(problem: str, source: str) -> float:
    m = re.match(re.escape(source) + r":(\d+)", problem)
    return int(m.group(1)) if m else float("inf")


def raise_problems(problems: list[str], source: str) -> None:
    if problems:
        problems = sorted(dict.fromkeys(problems), key=lambda p: _line_of(p, source))
        raise ConfigError(problems[0], problems)


def load_spec(path, overrides=()) -> SweepSpec:
    """Read, override and validate a sweep spec; one ConfigError with every problem as ``file:line: ...``."""
    source = str(path)
    path = Path(path)
    tree = parse_yaml(read_spec_text(path, source), source)
    for o in overrides:
        apply_spec_override(tree, o, source)
    try:
        spec = SweepSpec.model_validate(to_plain(tree))
    except ValidationError as e:
        raise_problems(validation_problems(e, tree, source), source)
    spec._source_path = path
    spec._source_name = source
    spec._overrides = tuple(overrides)
    spec._tree = tree
    raise_problems(_spec_problems(spec), source)
    return spec


def _spec_problems(spec: SweepSpec) -> list[str]:
    """What the schema alone cannot say: path syntax, metric names, optuna's limits."""
    problems = []
    for section in SECTIONS_OF_PATHS:
        for key in getattr(spec, section):
            try:
                parse_override(f"{key}=0", spec.source_name)
            except ConfigError:
                problems.append(f"{spec.location((section, key))}: '{key}' is not a config path like "
                                "train.optimizer.lr or model.layers[0].filters")
    if spec.metric is not None and spec.metric not in METRICS and not TOPK_METRIC.match(spec.metric):
        problems.append(f"{spec.location(('metric',))}: unknown metric {spec.metric!r}"
                        + suggest(spec.metric, METRICS + ("val_top5_accuracy",), "metrics"))
    if spec.search == "optuna":
        for key, domain in spec.space.items():
            if domain.kind == "grid":
                problems.append(f"{spec.location(('space', key))}: grid is not supported with search: optuna "
                                "(Optuna samples every value); use choice, or search: random for a grid")
            elif domain.kind == "choice" and not all(v is None or isinstance(v, (bool, int, float, str))
                                                     for v in domain.args):
                problems.append(f"{spec.location(('space', key))}: with search: optuna, choice takes numbers, "
                                "text, true/false or null, not lists or mappings")
    overlap = sorted(set(spec.space) & set(spec.overrides))
    for key in overlap:
        problems.append(f"{spec.location(('space', key))}: '{key}' is both searched and fixed in overrides; keep one")
    return problems


# ============================================================================ the plan
@dataclass
class SweepPlan:
    """A spec checked against its base config: what the runner needs."""

    spec: SweepSpec
    name: str
    base: Path  # absolute
    base_shown: str  # as messages name it
    fixed: list[str]  # the spec's overrides as --set strings
    metric: str
    mode: str
    max_epochs: int

    @property
    def grid_points(self) -> int:
        n = 1
        for domain in self.spec.space.values():
            if domain.kind == "grid":
                n *= len(domain.args)
        return n

    @property
    def total_trials(self) -> int:
        return self.spec.trials * self.grid_points

    def trial_overrides(self, params: dict[str, Any]) -> list[str]:
        """The --set strings of one trial: the fixed overrides, then its sampled values."""
        return self.fixed + [f"{key}={yaml_value(value)}" for key, value in params.items()]

    def trial_config(self, params: dict[str, Any], extra=()):
        """The trial's Config, validated like ``--set`` (ConfigError if a sampled value is not valid)."""
        return load_config(self.base, self.trial_overrides(params) + list(extra))

    def resolved(self, sweep_dir: Path) -> dict:
        """The spec as ``sweep.yaml`` holds it: absolute base, name, metric, mode and folder filled in."""
        data = {"name": self.name, "base": str(self.base)}
        data.update(self.spec.model_dump(mode="json", exclude_none=True, exclude={"name", "base"}))
        data.update(metric=self.metric, mode=self.mode)
        data["output"] = {"dir": str(Path(sweep_dir).resolve()), "root": self.spec.output.root}
        return data


def _shown_path(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return rel if not rel.startswith("..") else str(path)


def _config_problem(e: ConfigError, override: str, base_shown: str) -> str:
    """A --set problem of the base config without its ``file: --set x=y: path:`` prefix."""
    text = e.problems[0]
    for prefix in (f"{base_shown}: --set {override}: ", f"{base_shown}: "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def plan_sweep(spec: SweepSpec) -> SweepPlan:
    """Check every path and edge value of ``overrides`` and ``space`` against the base config."""
    source_dir = spec.source_path.resolve().parent if spec.source_path is not None else Path.cwd()
    base = (source_dir / Path(spec.base).expanduser()).resolve()
    if not base.is_file():
        raise ConfigError(f"{spec.location(('base',))}: no config {spec.base!r} "
                          f"(looked at {base}; a relative base is read from the spec's folder)")
    base_shown = _shown_path(base)
    load_config(base_shown)  # the base's own problems, with its lines
    problems = []

    def check(path: tuple, overrides: list[str], what: str = "") -> Any:
        try:
            return load_config(base_shown, overrides)
        except ConfigError as e:
            detail = _config_problem(e, overrides[-1], base_shown).removeprefix(f"{path[-1]}: ")
            problems.append(f"{spec.location(path)}: {what}{detail} (checked against {base_shown})")
            return None

    fixed = [f"{key}={yaml_value(value)}" for key, value in spec.overrides.items()]
    for (key, value), text in zip(spec.overrides.items(), fixed):
        check(("overrides", key), [text])
    raise_problems(problems, spec.source_name)
    config = check(("overrides",), fixed)
    raise_problems(problems, spec.source_name)
    for key, domain in spec.space.items():
        for value in domain.edge_values():  # the first value that does not fit says enough
            shown = yaml_value(value)
            if check(("space", key), fixed + [f"{key}={shown}"], f"{domain.kind} value {shown}: ") is None:
                break
    raise_problems(problems, spec.source_name)

    metric = spec.metric or config.output.monitor
    if spec.mode is not None:
        mode = spec.mode
    elif metric == config.output.monitor:
        mode = config.output.mode
    else:
        mode = "min" if metric.endswith("loss") else "max"
    epochs = int(config.train.epochs)
    if "train.epochs" in spec.space:
        values = spec.space["train.epochs"].edge_values()
        epochs = max(int(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool))
    if isinstance(spec.scheduler, AshaSpec):
        max_t = spec.scheduler.max_t or epochs
        if spec.scheduler.grace_period > max_t:
            problems.append(f"{spec.location(('scheduler', 'grace_period'))}: grace_period "
                            f"{spec.scheduler.grace_period} is more than the {max_t} epochs a trial trains")
    raise_problems(problems, spec.source_name)
    name = spec.name or (spec.source_path.stem if spec.source_path is not None else "sweep")
    return SweepPlan(spec=spec, name=name, base=base, base_shown=base_shown, fixed=fixed, metric=metric, mode=mode,
                     max_epochs=epochs)
