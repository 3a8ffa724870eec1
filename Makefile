# Two commands on a fresh machine: `make test` and `make demo`. Both build .venv first when it is missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1

.PHONY: install test lint demo sweep bench clean mlflow-ui cluster-test chromium

install: $(STAMP)

# torch and torchvision first, pinned as a pair: if any later package pulled a torch of its own,
# pip would download a several-GB build that does not import beside this torchvision.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: $(STAMP) chromium
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# Headless Chromium renders the page of `promptswitch serve` in tests/library/test_serve.py (Debian, as root;
# elsewhere that test is skipped with its reason).
chromium:
	@test -x /usr/bin/chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium) \
		|| echo "no chromium: the page test of promptswitch serve will be skipped"

lint: $(STAMP)
	$(PY) -m ruff check .

DEMO_DATA := data/twins/manifest.parquet
DEMO_WEIGHTS := data/tiny-image-clip.safetensors
SYNTH_DATA := data/synth/manifest.parquet

# The whole product on one machine, in the paper's setting: the tiny CLIP pretrained on images (made once,
# a minute) fine-tuned into Prompt Switch on order-twin videos, on local Ray with 2 workers, validation and
# test, MLflow in ./mlflow.db. Running it again resumes (or re-scores) run "demo".
demo: $(STAMP) $(DEMO_DATA) $(DEMO_WEIGHTS)
	$(VENV)/bin/promptswitch train --config configs/demo.yaml

# A Ray Tune sweep on the moving-shapes data: 6 trials of configs/scratch.yaml, shorter, early-stopped by
# ASHA, nested MLflow runs; prints a leaderboard and the command that trains the best configuration.
sweep: $(STAMP) $(SYNTH_DATA)
	$(VENV)/bin/promptswitch tune --config configs/sweep-demo.yaml

$(DEMO_DATA): | $(STAMP)
	$(VENV)/bin/promptswitch data twins --out data/twins

$(DEMO_WEIGHTS): | $(STAMP)
	$(VENV)/bin/promptswitch pretrain-tiny --out $@

$(SYNTH_DATA): | $(STAMP)
	$(VENV)/bin/promptswitch data synth --out data/synth --videos 144 --seed 24

# README's cluster workflow for real (root only): ray up of cluster.yaml's local variant with a worker node
# in its own network namespace, ray submit of train.py, the MLflow run and node ids checked, ray down.
cluster-test: $(STAMP)
	bash tests/cluster/cluster_test.sh

bench: $(STAMP)
	$(PY) bench/model_cost.py

# The MLflow UI over the project's store (what runs log to without tracking.tracking_uri), on loopback only.
mlflow-ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
