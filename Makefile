# The interface: make run, make test, make lint, make bench, make fixtures.
# Each target creates its own virtual environment and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint bench fixtures fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,lint]'
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime
	@mkdir -p build
	$(BIN)/netinit fixtures/cnn.onnx --method orthogonal --all -o build/cnn.init.onnx --force

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q

lint: $(VENV)/.dev
	$(BIN)/ruff check netinit_cli tests fixtures bench fuzz
	$(BIN)/ruff format --check netinit_cli tests fixtures bench fuzz
	$(BIN)/mypy --strict netinit_cli

fixtures: $(VENV)/.dev
	$(BIN)/python -m pip install -q -e '.[fixtures]'
	$(BIN)/python fixtures/generate.py
	$(BIN)/python fixtures/generate_onnx_zoo.py
	$(BIN)/python fixtures/generate_skl2onnx.py
	$(BIN)/python fixtures/generate_families.py

fuzz: $(VENV)/.dev
	$(BIN)/python -m pip install -q -e '.[fuzz]'
	$(BIN)/python fuzz/summary.py --mutations 1000
	$(BIN)/python fuzz/run.py --seconds 180

bench: $(VENV)/.dev
	$(BIN)/python bench/run.py
	$(BIN)/python bench/lsuv_bench.py --rebuild

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
