"""Where two nested configs (dicts and lists from YAML or ``Config.resolved``) differ, as dotted keys.

``changed_keys({"train": {"lr": 0.1}}, {"train": {"lr": 0.2}})`` is ``["train.lr"]``; list
items are named by index (``model.layers[2].units``), a list of another length or a key
on one side only by the path where they part. Used by resume (which keys of the config
changed) and ``nettrain compare`` (which settings tell two runs apart).
"""

from __future__ import annotations

from typing import Any


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted paths at which ``new`` differs from ``old``, in ``old``'s key order, then ``new``'s."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in [*old, *(k for k in new if k not in old)]:
            if key not in old or key not in new:
                out.append(_join(prefix, key))
            else:
                out += changed_keys(old[key], new[key], _join(prefix, key))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [k for i, (a, b) in enumerate(zip(old, new)) for k in changed_keys(a, b, f"{prefix}[{i}]")]
    same_kind = type(old) is type(new) or (_number(old) and _number(new))  # 1 == 1.0, but True != 1
    return [] if same_kind and old == new else [prefix or "(everything)"]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf values by dotted path: ``{"train.optimizer.lr": 0.1, "model.layers[0].units": 32, ...}``."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in flatten(value, _join(prefix, key)).items()}
    if isinstance(tree, list) and tree:
        return {k: v for i, value in enumerate(tree) for k, v in flatten(value, f"{prefix}[{i}]").items()}
    return {prefix: tree}
