# The two set-up commands: `make demo` and `make test`. Each creates .venv and installs what it needs.
# torch is installed first, pinned to the CPU build: an open range would pull a multi-GB CUDA build.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q torch==2.13.0
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/wsc compile examples/cerebras_gpt.py --target cs2-sim

test: $(STAMP)
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check wsc passes runtime targets tests benchmarks examples
	$(VENV)/bin/mypy
	$(VENV)/bin/python tests/lint_imports.py  # the import contracts of pyproject.toml, on an installed-layout copy

clean:
	rm -rf $(VENV) wsc_out build *.egg-info
