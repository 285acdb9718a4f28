"""Fixtures of the security suite: the services' tiny dataset (tests/services/tinydata.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_TINYDATA = Path(__file__).resolve().parent.parent / "services" / "tinydata.py"


def load_tinydata():
    spec = importlib.util.spec_from_file_location("i2x_tests_tinydata", _TINYDATA)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return load_tinydata().write_tiny_npz(tmp_path_factory.mktemp("data") / "tiny.npz")
