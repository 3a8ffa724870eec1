# Two commands on a fresh machine: `make test` and `make demo`. Both build .venv first when it is missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1

.PHONY: install test lint demo bench clean

install: $(STAMP)

# torch and torchvision first, pinned as a pair: if any later package pulled a torch of its own,
# pip would download a several-GB build that does not import beside this torchvision.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

demo: $(STAMP)
	$(PY) -m orchestrator.cli demo

bench: $(STAMP)
	$(PY) bench/model_cost.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
