"""The config file: schema, YAML front end and reference.

A config is one YAML file with ``model:``, ``data:``, ``train:`` and ``output:``
sections.  The package reads it in the order of its modules:

* :mod:`.yamltree` -- YAML parsed into a tree that remembers every value's line;
* :mod:`.overrides` -- ``--set path=value`` applied to the tree as written;
* :mod:`.sugar` -- ``repeat: n`` and named blocks expanded into plain layers;
* :mod:`.schema` -- the pydantic models the expanded tree validates against;
* :mod:`.messages` -- did-you-mean suggestions and pydantic's errors as ``file:line`` lines;
* :mod:`.loader` -- :func:`load_config`, :func:`parse_config`, :func:`config_from_dict`;

and :mod:`.walk` / :mod:`.reference` read the schema itself (which keys and types
apply where; the ``nettrain layers`` reference and the generated docs).
"""

from .loader import MAX_FILE_BYTES, config_from_dict, config_from_tree, load_config, parse_config
from .reference import describe_type, fields_reference, layer_reference
from .schema import BlockSpec, Config, EarlyStoppingSpec, ModelSpec, OutputSpec, TrainSpec
from ..shapes import user_to_internal_shape

__all__ = [
    "MAX_FILE_BYTES",
    "BlockSpec",
    "Config",
    "EarlyStoppingSpec",
    "ModelSpec",
    "OutputSpec",
    "TrainSpec",
    "config_from_dict",
    "config_from_tree",
    "describe_type",
    "fields_reference",
    "layer_reference",
    "load_config",
    "parse_config",
    "user_to_internal_shape",
]
