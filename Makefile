# Two commands do all set-up on a fresh machine:
#   make run    create the venv, install, start the web UI on 127.0.0.1:7860
#   make test   create the venv, install (with test extras + chromium), run the tests
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run demo lint typecheck test test-slow install install-test browser clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e .
	@# a CUDA machine gets the GPU build of ONNX Runtime, so face analysis and the likeness
	@# score run on the GPU (pipelines/faces/analysis.py picks CUDAExecutionProvider when present)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  $(BIN)/pip uninstall -q -y onnxruntime && $(BIN)/pip install -q "onnxruntime-gpu>=1.18"; fi
	touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(STAMP)
install-test: $(TEST_STAMP) browser

# Debian's chromium for the browser tests (playwright never downloads a browser)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi; }

run: install
	$(BIN)/python launch.py ui

demo: install
	$(BIN)/python launch.py --demo ui

# lint and type checking first ([tool.ruff] and [tool.mypy] in pyproject.toml), then the tests
lint: install-test
	$(BIN)/ruff check .

typecheck: install-test
	$(BIN)/mypy

test: install-test lint typecheck
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-slow: install-test
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
