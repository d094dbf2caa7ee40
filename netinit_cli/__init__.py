"""netinit: initialize the missing (or all) parameters of ONNX models and safetensors checkpoints.

Public API::

    from netinit_cli import initialize, inspect
    report = initialize("model.onnx", out="out.onnx", method="orthogonal", all=True, seed=1234)

Names are loaded lazily, so importing one submodule (``netinit_cli.dtypes``) does not import
the whole pipeline (and onnx with it).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Report": "netinit_cli.report",
    "build_options": "netinit_cli.options",
    "initialize": "netinit_cli.api",
    "inspect": "netinit_cli.api",
    "InputError": "netinit_cli.errors",
    "NetinitError": "netinit_cli.errors",
    "OutputError": "netinit_cli.errors",
    "OutputExistsError": "netinit_cli.errors",
    "UnsafeInputError": "netinit_cli.errors",
    "UsageError": "netinit_cli.errors",
}

if TYPE_CHECKING:
    from netinit_cli.api import initialize, inspect
    from netinit_cli.errors import (
        InputError,
        NetinitError,
        OutputError,
        OutputExistsError,
        UnsafeInputError,
        UsageError,
    )
    from netinit_cli.options import build_options
    from netinit_cli.report import Report


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'netinit_cli' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = [
    "InputError",
    "NetinitError",
    "OutputError",
    "OutputExistsError",
    "Report",
    "UnsafeInputError",
    "UsageError",
    "__version__",
    "build_options",
    "initialize",
    "inspect",
]
