"""nettrain: declarative, config-driven training of convolutional and recurrent networks in NumPy.

    from nettrain import load_config, build_model

    config = load_config("configs/quickstart.yaml", ["train.epochs=3"])
    model = build_model(config)          # built, parameters initialised from train.seed
    logits = model.forward(x, training=False)

Names are imported on first use, so ``import nettrain`` (and the CLI) stay quick.
"""

from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "load_config": "config",
    "parse_config": "config",
    "config_from_dict": "config",
    "Config": "config",
    "build_model": "builder",
    "summarize": "summary",
    "Model": "model",
    "NettrainError": "errors",
    "ConfigError": "errors",
    "ShapeError": "errors",
    "DataError": "errors",
    "CheckpointError": "errors",
    "TrainingError": "errors",
}

__all__ = ["__version__", *_EXPORTS]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
