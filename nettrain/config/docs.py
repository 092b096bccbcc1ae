"""The generated parts of docs/config.md: every key's table, read from the schema.

The tables sit between ``<!-- generated: NAME -->`` and ``<!-- end of generated: NAME -->``
lines; the prose around them is written by hand.  Regenerate them after changing a
spec (a field, its default or its ``description``)::

    python -m nettrain.config.docs            # rewrites docs/config.md
    python -m nettrain.config.docs --check    # exit 1 if it is out of date

``tests/test_docs.py`` runs the check.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable

from pydantic import BaseModel

from ..data.spec import AugmentSpec, DataSpec, SyntheticSpec
from ..initializers import DESCRIPTIONS as INITIALIZERS
from ..runs import write_text_atomic
from .reference import fields_markdown, fields_reference, layers_markdown
from .schema import Config, DistributedSpec, EarlyStoppingSpec, ModelSpec, OutputSpec, TrainSpec

DOC = Path(__file__).resolve().parent.parent.parent / "docs" / "config.md"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w.]+) -->\n)(?P<body>.*?)(<!-- end of generated: (?P=name) -->)", re.S)
SECTIONS = ("model", "data", "train", "output")


def key_table(model: type[BaseModel], leave_out: tuple[str, ...] = ()) -> str:
    """``| key | accepts | default | meaning |`` for each field of ``model``."""
    fields = [f for f in fields_reference(model) if f["name"] not in leave_out]
    return "\n".join(fields_markdown(fields, first="key", second="accepts")) + "\n"


def initializers_table() -> str:
    rows = ["| name | draws |", "| --- | --- |"] + [f"| `{name}` | {text} |" for name, text in INITIALIZERS.items()]
    return "\n".join(rows) + "\n"


GENERATORS: dict[str, Callable[[], str]] = {
    "top": lambda: key_table(Config, leave_out=SECTIONS),
    "model": lambda: key_table(ModelSpec),
    "train": lambda: key_table(TrainSpec),
    "train.early_stopping": lambda: key_table(EarlyStoppingSpec),
    "train.distributed": lambda: key_table(DistributedSpec),
    "data": lambda: key_table(DataSpec),
    "data.augment": lambda: key_table(AugmentSpec),
    "data.synthetic": lambda: key_table(SyntheticSpec),
    "output": lambda: key_table(OutputSpec),
    "initializers": initializers_table,
    "layers": lambda: layers_markdown(),
}


def regenerate(text: str) -> str:
    """``text`` with every generated block written anew; a ValueError names a block missing or unknown."""
    found = [m.group("name") for m in BLOCK.finditer(text)]
    unknown = sorted(set(found) - set(GENERATORS))
    missing = sorted(set(GENERATORS) - set(found))
    if unknown or missing:
        raise ValueError(f"generated blocks unknown: {unknown}, missing: {missing}")
    return BLOCK.sub(lambda m: m.group(1) + GENERATORS[m.group("name")]() + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nettrain.config.docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", type=Path, default=DOC, help="the file to rewrite (docs/config.md)")
    parser.add_argument("--check", action="store_true", help="only say whether it is up to date (exit 1 if not)")
    args = parser.parse_args(argv)
    text = args.path.read_text(encoding="utf-8")
    fresh = regenerate(text)
    if args.check:
        if fresh != text:
            print(f"{args.path} is out of date; run: python -m nettrain.config.docs", file=sys.stderr)
            return 1
        return 0
    if fresh != text:
        write_text_atomic(args.path, fresh)
        print(f"rewrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
