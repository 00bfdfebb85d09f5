# liquidgen: the commands a user types. Variables can be overridden: make cache DATASET=flowers VAE=sd
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DATASET ?= paintings
VAE     ?= flux
RES     ?= 256
FORMAT  ?= zarr
CACHE   ?= cache/$(DATASET)
RUN     ?= runs/$(DATASET)
MODEL   ?= small
BATCH   ?= 256
STEPS   ?= 100000
N       ?= 64
TRAIN_ARGS ?=

.PHONY: install cache info verify train resume sample test test-all bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python  ## a virtual environment with liquidgen (CPU torch unless torch is already there)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q torch
	$(BIN)/pip install -q -e ".[test]"

cache:  ## encode a dataset into cache/$(DATASET)
	$(BIN)/liquidgen encode $(DATASET) --out $(CACHE) --vae $(VAE) --resolution $(RES) --format $(FORMAT)
	$(BIN)/liquidgen cache verify $(CACHE)

info:
	$(BIN)/liquidgen cache info $(CACHE)

verify:
	$(BIN)/liquidgen cache verify $(CACHE)

train:  ## train on cache/$(DATASET) into runs/$(DATASET); rerun with `make resume`
	$(BIN)/liquidgen train --cache $(CACHE) --out $(RUN) --model $(MODEL) --batch-size $(BATCH) --steps $(STEPS) $(TRAIN_ARGS)

resume:
	$(BIN)/liquidgen train --cache $(CACHE) --out $(RUN) --model $(MODEL) --batch-size $(BATCH) --steps $(STEPS) $(TRAIN_ARGS) --resume

sample:  ## $(N) images from runs/$(DATASET) into samples/$(DATASET)
	$(BIN)/liquidgen sample --run $(RUN) --n $(N) --out samples/$(DATASET)

$(BIN)/liquidgen:  # the environment `make test` needs, built once when missing
	$(MAKE) install

test: | $(BIN)/liquidgen  ## the CI suite (fast, CPU, real VAE and real paintings from ../shared)
	$(BIN)/python -m pytest -q

test-all:  ## also the slow tests
	$(BIN)/python -m pytest -q -m ""

bench:  ## benchmarks; figures go to docs/benchmarks.md
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf build *.egg-info .pytest_cache
