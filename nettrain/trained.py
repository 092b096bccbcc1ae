"""A model rebuilt from a checkpoint (or exported weights), with the config and checkpoint it came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .checkpoint import Checkpoint


@dataclass
class Trained:
    """A model rebuilt from a checkpoint, with the config and checkpoint it came from."""

    model: Any
    config: Any
    checkpoint: Checkpoint
    path: Path

    @property
    def classes(self) -> list[str]:
        return self.checkpoint.classes

    @property
    def config_dir(self) -> Path | None:
        source = self.checkpoint.config_path
        return Path(source).parent if source else None


def config_from_text(text: str, source: str, overrides: Sequence[str] = ()):
    """Validate config text (as stored in a checkpoint) with the config loader; ``source`` names it in errors."""
    from .config import parse_config

    return parse_config(text, source, tuple(overrides))
