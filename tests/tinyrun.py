"""Tiny configs for the training, checkpoint and eval tests: a few hundred 8x8 images, runs in well under a second."""

from __future__ import annotations

from pathlib import Path

import yaml

from nettrain.config import load_config
from nettrain.training import Reporter

TIME_COLUMNS = ("seconds", "img_per_s")


def tiny_config_dict(out_dir: Path | None = None, *, classes: int = 4, epochs: int = 2, dropout: bool = True,
                     augment: bool = True, **train) -> dict:
    layers = [
        {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu", "name": "conv"},
        {"type": "batchnorm", "name": "bn"},
        {"type": "maxpool2d", "pool_size": 2, "name": "pool"},
        {"type": "flatten", "name": "flat"},
    ]
    if dropout:
        layers.append({"type": "dropout", "rate": 0.25, "name": "drop"})
    layers.append({"type": "dense", "units": classes, "name": "out"})
    data = {"dataset": "synthetic",
            "synthetic": {"shape": [8, 8, 1], "num_classes": classes, "train_size": 200, "test_size": 60}}
    if augment:
        data["augment"] = {"random_crop_padding": 1, "horizontal_flip": True}
    config = {
        "name": "tiny",
        "model": {"input_shape": [8, 8, 1], "layers": layers},
        "data": data,
        "train": {"optimizer": {"type": "adam", "lr": 0.01}, "epochs": epochs, "batch_size": 32, **train},
        "output": {"plots": False},
    }
    if out_dir is not None:
        config["output"]["dir"] = str(out_dir)
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def tiny_config(tmp_path: Path, run_name: str = "run", overrides=(), **kwargs):
    """A loaded tiny Config whose output.dir is ``tmp_path/run_name``."""
    path = write_config(tmp_path / f"{run_name}.yaml", tiny_config_dict(tmp_path / run_name, **kwargs))
    return load_config(path, overrides)


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in rows]


class StopAfter(Reporter):
    """Asks its trainer to stop (as a signal handler would) after ``batch`` of ``epoch`` (both from 1)."""

    def __init__(self, epoch: int, batch: int, signum: int = 2):
        self.at = (epoch, batch)
        self.signum = signum
        self.trainer = None
        self.notes: list[str] = []

    def batch_end(self, epoch, batch, loss, accuracy, img_per_s):
        if (epoch, batch) == self.at:
            self.trainer.request_stop(self.signum)

    def note(self, message):
        self.notes.append(message)
