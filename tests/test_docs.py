"""docs/config.md: its tables are generated from the schema, current, and explain every key."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest

from nettrain.config.docs import GENERATORS, main, regenerate
from nettrain.config.schema import Config, EarlyStoppingSpec, ModelSpec, OutputSpec, TrainSpec
from nettrain.data.spec import AugmentSpec, DataSpec, SyntheticSpec
from nettrain.initializers import DESCRIPTIONS, InitializerName

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "config.md"


def test_the_generated_tables_are_current():
    text = DOC.read_text(encoding="utf-8")
    assert regenerate(text) == text, "docs/config.md is out of date: run python -m nettrain.config.docs"


@pytest.mark.parametrize("spec", [Config, ModelSpec, TrainSpec, EarlyStoppingSpec, DataSpec, AugmentSpec,
                                  SyntheticSpec, OutputSpec])
def test_every_key_says_what_it_does(spec):
    sections = {"model", "data", "train", "output"}  # explained by their own tables
    missing = [name for name, f in spec.model_fields.items() if not f.description and not (
        spec is Config and name in sections)]
    assert missing == [], f"{spec.__name__}: give these fields a description: {missing}"


def test_every_initializer_is_described():
    assert set(DESCRIPTIONS) == set(typing.get_args(InitializerName))


def test_what_new_users_asked_about_is_in_the_reference():
    text = DOC.read_text(encoding="utf-8")
    for needed in ("`x_train`", "`y_train`", "`x_val`", "`x_test`", "`classes`",  # npz arrays
                   "path/train/<class>/", "`subset`", "`channels`", "`validation`", "`noise`",
                   "`log_every`", "std 0.05", "`kernel_initializer`", "null: he_normal when",
                   "`decay_bias_and_norm: false`", "`warmup_epochs`", "model.layers[-1]"):
        assert needed in text, needed


def test_the_check_fails_on_a_stale_file_and_the_rewrite_fixes_it(tmp_path, capsys):
    stale = tmp_path / "config.md"
    stale.write_text(DOC.read_text(encoding="utf-8").replace("| `log_every` |", "| `log_evry` |"))
    assert main(["--check", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main([str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == DOC.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="missing: \\['top'\\]"):
        regenerate(DOC.read_text(encoding="utf-8").replace("<!-- generated: top -->", ""))
    assert set(GENERATORS) >= {"model", "data", "train", "output", "layers"}


def test_the_module_runs_as_a_command():
    result = subprocess.run([sys.executable, "-m", "nettrain.config.docs", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
