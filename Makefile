# Kiosk: `make run` starts the local stack, `make test` runs every test.
# Both install what they need first (Python packages into .venv, exactly the versions in
# requirements/all.txt; redis-server and, for the tests, prometheus from the OS).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SYNCED := $(VENV)/.synced
INSTALLED := $(VENV)/.installed

# The locks (make lock): requirements/all.txt is what .venv gets (the runtime packages, the
# serve and dev extras); requirements/runtime.txt, what the images get (no extras, the same
# versions). Both for CPython 3.11 on x86_64 Linux (glibc 2.28 or newer), with hashes.
LOCK_PYTHON := 3.11
LOCK_PLATFORM := x86_64-manylinux_2_28
LOCK_INDEX := https://pypi.org/simple
# uv reads no uv.toml (--no-config), none of the variables that would add indexes or change the
# resolution, and never pip's configuration: the locks are what PyPI gives for pyproject.toml.
LOCK_ENV := env -u UV_CONFIG_FILE -u UV_INDEX -u UV_EXTRA_INDEX_URL -u UV_FIND_LINKS \
	-u UV_CONSTRAINT -u UV_OVERRIDE -u UV_EXCLUDE_NEWER -u UV_PRERELEASE -u UV_RESOLUTION \
	-u UV_INDEX_STRATEGY -u UV_NO_BINARY -u UV_ONLY_BINARY -u UV_NO_BUILD -u UV_TORCH_BACKEND
UV_COMPILE := $(LOCK_ENV) $(BIN)/uv --no-config pip compile --quiet --generate-hashes \
	--python-version $(LOCK_PYTHON) --python-platform $(LOCK_PLATFORM) \
	--default-index $(LOCK_INDEX) --custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade)
# $(call compile,LOCK,ARGS): uv starts from the lock's pins and writes a copy in .venv, which
# replaces the lock only if it differs (an unchanged lock keeps its date: nothing reinstalls).
compile = cp requirements/$(1) $(VENV)/$(1) && $(UV_COMPILE) $(2) -o $(VENV)/$(1) \
	&& { cmp -s $(VENV)/$(1) requirements/$(1) || cp $(VENV)/$(1) requirements/$(1); }

.PHONY: help setup system-deps test-deps run test lint format lock bench evaluate model model-wholecell model-cytoplasm model-division samples protos settings-table clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# The locked set, hashes checked (pip and setuptools included), then Kiosk itself on top:
# without dependencies, built by the locked setuptools. pip check fails when pyproject.toml asks
# for something the lock lacks (run make lock).
$(SYNCED): requirements/all.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/all.txt
	touch $@

$(INSTALLED): $(SYNCED) pyproject.toml
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@$(BIN)/python -m pip check || { echo "pyproject.toml asks for packages that" \
		"requirements/all.txt lacks: run make lock" >&2; exit 1; }
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

lint: $(INSTALLED) ## ruff (lint, format check), mypy (types of every runtime package), hadolint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile.consumer Dockerfile.autoscaler

format: $(INSTALLED) ## ruff: fix what can be fixed, format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

lock: $(SYNCED) ## refresh requirements/*.txt from pyproject.toml (UPGRADE=1: newest of everything)
	$(call compile,all.txt,pyproject.toml requirements/build.in --extra serve --extra dev)
	$(call compile,runtime.txt,pyproject.toml requirements/build.in -c requirements/all.txt)

bench: setup ## run the benchmarks; results in benchmark/results/
	$(BIN)/python -m benchmark.queue_throughput
	$(BIN)/python -m benchmark.eta_accuracy --rounds 3
	$(BIN)/python -m benchmark.http_overhead
	$(BIN)/python -m benchmark.upload_memory
	$(BIN)/python -m benchmark.tensor_encoding
	$(BIN)/python -m benchmark.deep_watershed
	$(BIN)/python -m benchmark.model_inference
	$(BIN)/python -m benchmark.serving_overhead
	$(BIN)/python -m benchmark.linking
	$(BIN)/python -m benchmark.zip_throughput
	$(BIN)/python -m benchmark.zip_throughput --baseline in-process --consumers 2
	$(BIN)/python -m benchmark.tracking_overhead
	$(BIN)/python -m benchmark.tracking_memory
	$(BIN)/python -m benchmark.consumer_memory
	$(BIN)/python -m benchmark.peer_stardist
	$(BIN)/python -m benchmark.redis_failover
	$(BIN)/python -m benchmark.cluster_sim
	$(BIN)/python -m benchmark.community_sim
	$(BIN)/python -m benchmark.scaling_policies

evaluate: setup ## segmentation quality (models vs classical baselines, generated and real images): nuclei, whole cells, tracking
	$(BIN)/python -m evaluation

model: $(INSTALLED) ## retrain the bundled nuclear model into models/NuclearSegmentation (~20 min on 2 cores)
	$(BIN)/python -m models.training.train_nuclear --out models/NuclearSegmentation
	$(BIN)/python -m models.training.export_onnx models/NuclearSegmentation/1

model-wholecell: $(INSTALLED) ## retrain the bundled whole-cell model into models/WholeCellSegmentation (~25 min on 2 cores)
	$(BIN)/python -m models.training.train_wholecell --out models/WholeCellSegmentation
	$(BIN)/python -m models.training.export_onnx models/WholeCellSegmentation/1

model-cytoplasm: $(INSTALLED) ## retrain the bundled cytoplasm/brightfield model into models/CytoplasmSegmentation (~25 min on 2 cores)
	$(BIN)/python -m models.training.train_cytoplasm --out models/CytoplasmSegmentation
	$(BIN)/python -m models.training.export_onnx models/CytoplasmSegmentation/1

model-division: $(INSTALLED) ## retrain the bundled division scorer into models/DivisionScoring (a few minutes on 2 cores)
	$(BIN)/python -m models.training.train_division --out models/DivisionScoring
	$(BIN)/python -m models.training.export_onnx models/DivisionScoring/1

samples: $(INSTALLED) ## regenerate the sample images in samples/ (same seeds, same images)
	$(BIN)/python -m local.samples

settings-table: $(INSTALLED) ## write README's settings table from the settings classes (services and job types)
	$(BIN)/python scripts/settings_table.py

protos: $(INSTALLED) ## regenerate kiosk/serving/protos from tfserving.proto
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. kiosk/serving/protos/tfserving.proto

clean: ## remove the virtual environment, caches and local stack data
	rm -rf $(VENV) .cache .kiosk .pytest_cache .ruff_cache
