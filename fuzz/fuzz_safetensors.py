"""Coverage-guided fuzzing of the safetensors header reader and bundle opener (atheris).

    .venv/bin/python fuzz/fuzz_safetensors.py CORPUS_DIR -max_total_time=120

Prefer ``fuzz/run.py``, which seeds the corpus and prints the figures.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["netinit_cli"]):
    from netinit_cli.classify.stage import classify
    from netinit_cli.formats.safetensors.bundle import open_safetensors

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _harness import make_target

if __name__ == "__main__":
    atheris.Setup(sys.argv, make_target(lambda path: classify(open_safetensors(path)), ".safetensors"))
    atheris.Fuzz()
