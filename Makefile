# The two commands: `make demo` and `make test`. Everything they need is installed from here.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --constraint constraints.txt
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install install-test services clean

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, so nothing that depends on it can pull a CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) --editable .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) --editable '.[test]'
	touch $@

services:
	scripts/ensure-services.sh

demo: install
	$(BIN)/deskmate ingest examples/kb
	$(BIN)/deskmate users import examples/users.csv
	$(BIN)/deskmate search

test: install-test services
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .deskmate .pytest_cache
