import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from nettrain.builder import make_layers  # noqa: E402
from nettrain.layers import REGISTRY, Layer  # noqa: E402

_made = itertools.count(1)


def make_layer(type_name: str, name: str | None = None, **fields) -> Layer:
    """A layer of a registered type from its YAML fields, not yet built: the one layer factory of the tests.

    Nested layers (a residual's ``body``) are given as field dicts, as in a config. The layer is
    named ``name`` or ``<type>_<k>`` with k counted over the whole session, and the layers inside
    it get unique names too, so that gradient checks of stacks never confuse two parameters.
    """
    name = name or f"{type_name}_{next(_made)}"
    spec = REGISTRY[type_name].Spec.model_validate({"type": type_name, "name": name, **fields})
    return make_layers([spec])[0]


def hide_module(monkeypatch, name: str) -> None:
    """Make ``import name`` (and its submodules) fail for the rest of the test, as if it were not installed."""
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        monkeypatch.setitem(sys.modules, key, None)
    monkeypatch.setitem(sys.modules, name, None)
