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
# `make demo`: the shipped paintings_mini and TAEF2, a nano model, offline
DEMO_CACHE ?= cache/paintings_mini
DEMO_RUN   ?= runs/paintings_mini
DEMO_OUT   ?= samples/paintings_mini
DEMO_STEPS ?= 600

.PHONY: install demo cache info verify train resume sample test test-all bench bench-gpu clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python  ## a virtual environment with liquidgen (CPU torch unless torch is already there)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q torch
	$(BIN)/pip install -q -e ".[test]"
	@# eval --fid's Inception: torch-fidelity without torchvision, which it only needs for other networks
	$(BIN)/pip install -q --no-deps "torch-fidelity>=0.4"

demo: | $(BIN)/liquidgen  ## offline, ~3 min on 2 CPU cores: encode paintings_mini, train a nano model, sample a grid
	$(BIN)/liquidgen encode paintings_mini --out $(DEMO_CACHE) --vae taef2 --resolution 128
	@# a rerun reuses the finished run; a run stopped part-way resumes
	@if [ "$$(cat $(DEMO_RUN)/checkpoints/latest 2>/dev/null)" = "step-$$(printf %07d $(DEMO_STEPS))" ]; then \
	  echo "$(DEMO_RUN) is at step $(DEMO_STEPS) already: reusing it"; \
	else \
	  $(BIN)/liquidgen train --cache $(DEMO_CACHE) --out $(DEMO_RUN) --model nano --batch-size 32 \
	    --steps $(DEMO_STEPS) --warmup 100 --lr 1e-3 --ckpt-every 200 --log-every 20 \
	    $$(test -f $(DEMO_RUN)/checkpoints/latest && echo --resume); \
	fi
	$(BIN)/liquidgen sample --run $(DEMO_RUN) --n 16 --steps 25 --out $(DEMO_OUT)
	$(BIN)/liquidgen plot $(DEMO_RUN)
	@echo ""
	@echo "the sample grid:  $(DEMO_OUT)/grid.png"
	@echo "the loss plot:    $(DEMO_RUN)/loss.png   (previews during training: $(DEMO_RUN)/previews/)"
	@echo "the latent cache: $(DEMO_CACHE)   (liquidgen cache info $(DEMO_CACHE))"

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

test: | $(BIN)/liquidgen  ## the CI suite (CPU; the shipped TAEF2 and paintings; ../shared only for the larger tests)
	$(BIN)/python -m pytest -q -rs

test-all:  ## also the slow tests
	$(BIN)/python -m pytest -q -m ""

bench:  ## benchmarks; figures go to docs/benchmarks.md
	$(BIN)/python benchmarks/run.py

bench-gpu:  ## on a CUDA device, ~6 min: training, loaders, encode, sampling -> docs/benchmarks.md (--smoke: anywhere, seconds)
	$(BIN)/python benchmarks/gpu.py

clean:
	rm -rf build *.egg-info .pytest_cache
