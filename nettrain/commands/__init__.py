"""Command modules of the ``nettrain`` command line, kept apart so that ``nettrain/cli.py`` stays short.

Each module defines its commands as plain functions and a ``register(app)`` that adds
them to the typer app; ``nettrain.cli`` calls it. :mod:`.common` holds what every
command shares: a NettrainError becomes one line on stderr and exit code 2.
A command module never imports ``nettrain.cli`` (no import cycle) and imports the
library inside its functions, so that ``nettrain --help`` stays quick.
"""
