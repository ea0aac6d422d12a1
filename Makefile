# Two set-up commands work on a fresh machine: `make demo` and `make test`.
# torch==2.13.0 is installed first: pip takes the CPU build from local disk, while a bare `torch`
# requirement would resolve to a multi-GB CUDA build. The package itself keeps `torch>=2.9`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
DEMO_OUT ?= runs/demo

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/flopwise train --out $(DEMO_OUT)
	$(VENV)/bin/flopwise generate "def " --checkpoint $(DEMO_OUT) --max-tokens 120

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
