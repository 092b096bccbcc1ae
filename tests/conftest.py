import itertools
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

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


def conv_against_loops(shape, filters, kernel, stride, padding, dilation, dtype=np.float32) -> SimpleNamespace:
    """A conv2d layer built for input ``shape`` (N, C, H, W), random ``dtype`` inputs and what the float64 loops
    of tests/naive.py give for them: ``g`` (geometry), ``x``, ``w``, ``b``, ``dy`` (float64), ``y``, ``dx``,
    ``dw``, ``db``. The kernel tests of both kernel sets check the convolution paths against these."""
    import naive

    cls = REGISTRY["conv2d"]
    layer = cls(cls.Spec(filters=filters, kernel_size=list(kernel), strides=list(stride), padding=padding,
                         dilation=list(dilation)))
    rng = np.random.default_rng(sum(shape))
    layer.build(shape[1:], rng)
    w, b = layer.params["kernel"].astype(dtype), rng.standard_normal(filters).astype(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    w64 = w.astype(np.float64)
    y = naive.conv2d(x.astype(np.float64), w64, b, stride, layer.pad, dilation)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = naive.conv2d_backward(x.astype(np.float64), w64, dy, stride, layer.pad, dilation)
    return SimpleNamespace(g=layer.geometry, x=x, w=w, b=b, dy=dy, y=y, dx=dx, dw=dw, db=db)
