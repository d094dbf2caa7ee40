"""Every output and plan netinit gives on the committed fixtures is what it was when recorded
(``tests/output_digests.py --write``): restructurings must not change one byte."""

from __future__ import annotations

import json

import output_digests
import pytest


@pytest.mark.slow
def test_outputs_and_plans_unchanged() -> None:
    expected = json.loads(output_digests.GOLDEN.read_text())
    methods = tuple(m for m in output_digests.METHODS if m not in output_digests.BLAS_DEPENDENT)
    actual = output_digests.record(methods)
    assert set(actual) == set(expected), "the fixture list changed: re-record with --write"
    differing = [
        f"{fixture}: {what}"
        for fixture, entry in actual.items()
        for what, value in entry.items()
        if expected[fixture].get(what) != value
    ]
    assert not differing, "outputs or plans changed:\n" + "\n".join(differing)
