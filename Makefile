# Two entry points for a fresh machine (see README):
#   make demo   creates .venv with the torch-free runtime and tags the shipped demo recording
#   make test   creates .venv with everything (torch pinned), installs system tools, runs the tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test install install-all system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q .

demo: install
	$(BIN)/dymn-edge tag runtime/assets/demo/humpback_whale.flac

# torch first and pinned: an unpinned requirement would pull a multi-GB CUDA build.
install-all: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[all,dev]"

system-deps:
	.ci/system-deps

test: system-deps install-all
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
