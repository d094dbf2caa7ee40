"""What the tests share: where the committed fixtures live, and scratch copies of them.

Test modules import the paths and helpers (``from conftest import FIXTURES``); pytest finds the
fixtures itself.  ONNX graphs built by hand come from :mod:`onnx_builders`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
FIXTURES = ROOT / "fixtures"  # the small models of fixtures/generate.py
ZOO = FIXTURES / "onnx"  # real exports: torch's exporters, skl2onnx, the onnx wheel
FAMILIES_DIR = FIXTURES / "families"  # tiny transformers checkpoints, one folder each
CORPORA = TESTS / "corpus"  # malformed files, one folder per format
GOLDEN = TESTS / "golden"

BUNDLED = (
    "cnn.onnx",
    "cnn_noparams.onnx",
    "mlp.onnx",
    "mlp_noparams.onnx",
    "cnn.safetensors",
    "mlp.safetensors",
)


def copy_fixtures(folder: Path, names: Iterable[str]) -> Path:
    """Copies of the named fixtures in ``folder`` (tests write beside them, never to the originals)."""
    for name in names:
        shutil.copy(FIXTURES / name, folder / name)
    return folder


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A scratch folder holding a copy of every bundled fixture."""
    return copy_fixtures(tmp_path, BUNDLED)
