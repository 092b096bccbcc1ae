"""Continuing a run from its folder: the config it was saved with, and which changes a resume may make.

``nettrain train --resume RUN`` alone reads ``RUN/config.yaml`` (:func:`load_run_config`);
a config file or ``--set`` given as well is compared with the saved config key by key
(:func:`config_changes`). Changes that would make the continued run a different run --
the architecture, or the length of the learning-rate schedule (``train.epochs``,
``train.schedule``, ``train.batch_size``) -- are refused unless explicitly allowed
(:func:`check_changes`); the others are reported and applied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..treediff import changed_keys, flatten

# Dotted-key prefixes a resume may not change without --allow-changes.
FIXED_ON_RESUME = ("model", "train.epochs", "train.schedule", "train.batch_size")


def load_run_config(run_dir: str | Path, overrides=()):
    """The config a run folder holds (``config.yaml``), with ``overrides`` applied.

    Relative paths in it (``data.path``) are resolved against the folder of the config
    file the run was started from, as they were when it started.
    """
    from ..checkpoint import read_meta
    from ..config import parse_config
    from ..runs import RunDir

    run = RunDir.open(run_dir)
    if not run.config_yaml.is_file():
        raise ConfigError(f"{run.config_yaml}: no such file; give the config with the run: "
                          f"nettrain train CONFIG --resume {run.path}")
    text = run.config_yaml.read_text(encoding="utf-8")
    original = str(read_meta(run.last).get("config_path") or "")
    path = Path(original) if original else run.config_yaml
    config = parse_config(text, str(run.config_yaml), list(overrides), path)
    # the header the run's config.yaml is written with keeps naming the file and --set it came from
    source, earlier = saved_provenance(text)
    if source is not None:
        config._source_name = source
        config._overrides = (*earlier, *overrides)
    return config


def saved_provenance(text: str) -> tuple[str | None, list[str]]:
    """The config file and ``--set`` values a saved config.yaml's header names (``Config.to_yaml``)."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# resolved from "):
        return None, []
    sets = []
    for line in lines[1:]:
        if not line.startswith("#   --set "):
            break
        sets.append(line[len("#   --set "):])
    return lines[0][len("# resolved from "):], sets


def config_changes(saved_text: str, config) -> list[str]:
    """The dotted keys in which ``config`` differs from the config text a checkpoint was saved with."""
    try:
        saved = yaml.safe_load(saved_text)
    except yaml.YAMLError:
        saved = None
    if not isinstance(saved, dict):
        return ["(the saved config cannot be read)"]
    return changed_keys(saved, config.resolved)


def _fixed(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") or key.startswith(p + "[") for p in FIXED_ON_RESUME)


def _value(tree: Any, key: str) -> str:
    flat = flatten(tree)
    if key in flat:
        return repr(flat[key])
    return "..."


def check_changes(saved_text: str, config, run_dir: str | Path, allow: bool) -> list[str]:
    """The changed keys; ConfigError (one line) when one of them is fixed on resume and not ``allow``."""
    changed = config_changes(saved_text, config)
    fixed = [k for k in changed if _fixed(k) or k.startswith("(")]
    if fixed and not allow:
        try:
            saved = yaml.safe_load(saved_text)
        except yaml.YAMLError:
            saved = {}
        shown = ", ".join(f"{k} ({_value(saved, k)} -> {_value(config.resolved, k)})" for k in fixed[:3])
        more = f" and {len(fixed) - 3} more" if len(fixed) > 3 else ""
        raise ConfigError(f"{run_dir}: resuming would change the architecture or schedule length the run was "
                          f"saved with: {shown}{more}; resume with --resume {run_dir} alone, "
                          "or add --allow-changes to continue with the change")
    return changed
