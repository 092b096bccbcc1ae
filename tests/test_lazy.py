"""Lazy package exports: a name is imported from its module on first use, then kept."""

from __future__ import annotations

import subprocess
import sys

import pytest

import nettrain
from nettrain import data


def test_a_name_comes_from_its_module_and_stays():
    from nettrain.data.npz import read_npz

    assert data.read_npz is read_npz
    assert "read_npz" in vars(data)  # the next lookup is a plain attribute
    assert nettrain.load_config is nettrain.config.load_config


def test_unknown_names_and_dir():
    with pytest.raises(AttributeError, match="module 'nettrain.data' has no attribute 'read_nothing'"):
        data.read_nothing
    assert {"load_data", "Batches", "DataError"} <= set(dir(data))
    assert dir(nettrain) == sorted(nettrain.__all__)


def test_importing_the_package_imports_no_reader():
    code = "import sys, nettrain.data; print(sorted(m for m in sys.modules if m.startswith('nettrain.data')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "['nettrain.data']"
