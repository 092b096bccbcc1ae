"""Reading a config: :func:`load_config` (a file), :func:`parse_config` (text), :func:`config_from_dict`.

Five steps, each reporting *all* its problems at once as ``file:line:
dotted.path: what is wrong`` lines of one :class:`~nettrain.errors.ConfigError`:

1. parse the YAML, remembering the line of every key (:mod:`.yamltree`);
2. apply ``--set path=value`` overrides to the tree as written (:mod:`.overrides`);
3. expand the sugar: ``repeat: n`` and uses of named ``model.blocks`` (:mod:`.sugar`);
4. check layer names are unique (:mod:`.sugar`);
5. validate with pydantic (:mod:`.schema`), translating its errors back to the
   file's lines (:mod:`.messages`).
"""

from __future__ import annotations

import re
from pathlib import Path as FilePath

from pydantic import ValidationError

from ..errors import ConfigError
from .messages import validation_problems
from .overrides import apply_override
from .schema import Config
from .sugar import expand_sugar, layer_name_problems
from .yamltree import Node, Where, from_plain, parse_yaml, to_plain

MAX_FILE_BYTES = 10 * 1024 * 1024


def config_from_tree(tree: Node, source: str, overrides=(), text: str | None = None,
                     path: FilePath | None = None) -> Config:
    """Overrides, sugar, name checks and validation of a parsed tree; one ConfigError with every problem."""
    for o in overrides:
        apply_override(tree, o, source)
    raw = to_plain(tree)
    expanded, problems = expand_sugar(tree, source)
    sugar_failed = bool(problems)
    problems += layer_name_problems(expanded, source)
    config = None
    try:
        config = Config.model_validate(to_plain(expanded))
    except ValidationError as e:
        found = validation_problems(e, expanded, source)
        if sugar_failed:  # a block that could not be expanded leaves model.layers short: not news
            found = [p for p in found if ": model.layers: " not in p]
        problems += found
        if not problems:  # every error was a repeat of one already reported; should not happen, but never pass
            problems = [f"{source}: {e.error_count()} validation error(s): {e.errors()[0]['msg']}"]
    if problems:
        problems = sorted(dict.fromkeys(problems), key=lambda p: _line_of(p, source))
        raise ConfigError(problems[0], problems)
    config._source_path = path
    config._source_text = text
    config._source_name = source
    config._overrides = tuple(overrides)
    config._raw = raw
    config._tree = expanded
    return config


def _line_of(problem: str, source: str) -> float:
    """The line a problem names (for sorting); problems without one go last."""
    m = re.match(re.escape(source) + r":(\d+)", problem)
    return int(m.group(1)) if m else float("inf")


def parse_config(text: str, source: str = "<config>", overrides=(), path: FilePath | None = None) -> Config:
    """Validate a config given as YAML text; ``source`` names it in error messages."""
    return config_from_tree(parse_yaml(text, source), source, overrides, text, path)


def config_from_dict(data: dict, overrides=(), source: str = "<config>") -> Config:
    """Validate a config given as a dict (blocks and repeat allowed, as in a file)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config must be a mapping, got {type(data).__name__}")
    return config_from_tree(from_plain(data, Where(())), source, overrides)


def load_config(path, overrides=()) -> Config:
    """Read, override, expand and validate a YAML config file.

    Raises ConfigError listing every problem as ``file:line: path: message``.
    """
    source = str(path)
    p = FilePath(path)
    return parse_config(read_yaml_text(p, source, "config file", MAX_FILE_BYTES), source, overrides, p)


def read_yaml_text(path: FilePath, source: str, what: str, max_bytes: int) -> str:
    """The text of a YAML file (a ``what``: "config file", "sweep spec"), or one ConfigError line saying why not."""
    if not path.is_file():
        raise ConfigError(f"{source}: no such file" if not path.exists() else f"{source}: is a directory, not a {what}")
    size = path.stat().st_size
    if size > max_bytes:
        raise ConfigError(f"{source}: {size / 2**20:.1f} MiB is too large for a {what} "
                          f"(the limit is {max_bytes // 2**20} MiB)")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: not UTF-8 text (byte {e.start}); is this a {what}?") from None
    except OSError as e:
        raise ConfigError(f"{source}: cannot read ({e.strerror})") from None

