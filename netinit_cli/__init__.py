"""netinit: initialize the missing (or all) parameters of ONNX models and safetensors checkpoints.

Public API::

    from netinit_cli import initialize, inspect
    report = initialize("model.onnx", out="out.onnx", method="orthogonal", all=True, seed=1234)
"""

from __future__ import annotations

__version__ = "0.1.0"

from netinit_cli.api import Report, build_options, initialize, inspect
from netinit_cli.errors import (
    InputError,
    NetinitError,
    OutputError,
    OutputExistsError,
    UnsafeInputError,
    UsageError,
)

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
