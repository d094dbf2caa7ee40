"""Coverage-guided fuzzing of the ONNX loader, external-data checks and classifier (atheris).

    .venv/bin/python fuzz/fuzz_onnx.py CORPUS_DIR -max_total_time=120

Only netinit's Python code is instrumented; protobuf and onnx.checker are C++ and run as
black boxes (their exceptions must still become NetinitError).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["netinit_cli"]):
    from netinit_cli.classify.stage import classify
    from netinit_cli.formats.onnx.reader import open_onnx

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _harness import make_target

if __name__ == "__main__":
    atheris.Setup(sys.argv, make_target(lambda path: classify(open_onnx(path)), ".onnx"))
    atheris.Fuzz()
