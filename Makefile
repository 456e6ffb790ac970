# Kiosk: `make run` starts the local stack, `make test` runs every test.
# Both install what they need first (Python packages into .venv, redis-server and, for the
# tests, prometheus from the OS).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: help setup system-deps test-deps run test lint format bench evaluate model samples protos settings-table clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[serve,dev]'
	touch $@

setup: system-deps $(INSTALLED) ## install Python packages (.venv) and redis-server

system-deps: ## install redis-server if it is missing
	@scripts/install-system-deps.sh redis-server

test-deps: ## install what the tests run beside Python (redis-server, prometheus, chromium, shellcheck) if missing
	@scripts/install-system-deps.sh redis-server prometheus chromium shellcheck

run: setup ## start the local stack at http://127.0.0.1:8080 and segment the samples (Ctrl-C stops it)
	$(BIN)/kiosk up --demo

test: setup test-deps lint ## lint, then run every test
	$(BIN)/pytest

lint: $(INSTALLED) ## ruff: lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile.consumer Dockerfile.autoscaler

format: $(INSTALLED) ## ruff: fix what can be fixed, format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup ## run the benchmarks; results in benchmark/results/
	$(BIN)/python -m benchmark.queue_throughput
	$(BIN)/python -m benchmark.http_overhead
	$(BIN)/python -m benchmark.upload_memory
	$(BIN)/python -m benchmark.tensor_encoding
	$(BIN)/python -m benchmark.deep_watershed
	$(BIN)/python -m benchmark.zip_throughput
	$(BIN)/python -m benchmark.consumer_memory
	$(BIN)/python -m benchmark.cluster_sim
	$(BIN)/python -m benchmark.scaling_policies

evaluate: setup ## segmentation quality, model vs classical baseline, generated and real nuclei
	$(BIN)/python -m evaluation

model: $(INSTALLED) ## retrain the bundled nuclear model into models/NuclearSegmentation (~20 min on 2 cores)
	$(BIN)/python -m models.training.train_nuclear --out models/NuclearSegmentation

samples: $(INSTALLED) ## regenerate the sample images in samples/ (same seeds, same images)
	$(BIN)/python -m local.samples

settings-table: $(INSTALLED) ## write README's settings table from the settings classes (services and job types)
	$(BIN)/python scripts/settings_table.py

protos: $(INSTALLED) ## regenerate kiosk/serving/protos from tfserving.proto
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. kiosk/serving/protos/tfserving.proto

clean: ## remove the virtual environment, caches and local stack data
	rm -rf $(VENV) .cache .kiosk .pytest_cache .ruff_cache
