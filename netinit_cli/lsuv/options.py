"""LSUV's sub-options, checked in one place: by the method registry when ``--method lsuv(…)`` is
parsed, and by the engine for callers of :func:`netinit_cli.lsuv.engine.run_lsuv`.  Imports
neither onnx nor onnxruntime, so parsing a method stays cheap."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from netinit_cli.errors import UsageError

MAX_ITER_LIMIT = 1000


@dataclass(frozen=True)
class LsuvOptions:
    """``lsuv(std=1, tol=0.1, max_iter=10)``: target std, tolerance, and the most corrections per
    layer (the ``lsuv`` package's loop can apply ``max_attempts + 1``; here it is exactly ``max_iter``)."""

    std: float = 1.0
    tol: float = 0.1
    max_iter: int = 10

    def __post_init__(self) -> None:
        if not (math.isfinite(self.std) and self.std > 0):
            raise UsageError(f"lsuv(std={self.std}) must be a positive number, e.g. lsuv(std=1)")
        if not (math.isfinite(self.tol) and 0 < self.tol < self.std):
            raise UsageError(
                f"lsuv(tol={self.tol}) must be above 0 and below std={self.std}, e.g. lsuv(tol=0.1)"
            )
        if (
            isinstance(self.max_iter, bool)
            or not isinstance(self.max_iter, int)
            or not 1 <= self.max_iter <= MAX_ITER_LIMIT
        ):
            raise UsageError(
                f"lsuv(max_iter={self.max_iter}) must be an integer from 1 to {MAX_ITER_LIMIT}, "
                "e.g. lsuv(max_iter=10)"
            )

    @classmethod
    def from_values(cls, values: Mapping[str, object]) -> LsuvOptions:
        """From a parsed method's option values (``std``, ``tol``, ``max_iter``)."""
        std, tol, max_iter = values["std"], values["tol"], values["max_iter"]
        assert isinstance(std, (int, float)) and isinstance(tol, (int, float)) and isinstance(max_iter, int)
        return cls(float(std), float(tol), max_iter)
