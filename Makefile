# Two commands for a newcomer:  `make train`  (install + train on the bundled corpus, offline)
#                               `make test`   (install + the whole test suite)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TEST_ENV := WANDB_MODE=offline WANDB_SILENT=true

.PHONY: help install train train-real test test-fast lint bench

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python  ## the venv with torch (CPU wheel), the package and its dev tools
	# The CPU wheel of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.4,<2.15"
	$(BIN)/pip install -q -e ".[dev]"

train: install  ## train the tiny model on the bundled corpus (offline, minutes)
	$(BIN)/python train.py

# The 2-core recipe on the real piano corpora in ../shared/midi (1,591 s, 27 minutes, in the README's run).
train-real: install  ## the 2-core recipe on ../shared/midi (about 27 minutes; bf16 autocast on the CPU; key tokens)
	$(BIN)/python train.py +experiment=round3 data=real paths.data_dir=../shared/midi scale=cpu trainer=cpu_bf16 tokenizer.key_tokens=true

test: install  ## every test, slow ones included (what CI runs); prints the 15 slowest
	$(TEST_ENV) $(BIN)/python -m pytest -q --durations=15

test-fast: install  ## the tests not marked slow (no whole-corpus conversion, no end-to-end runs)
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "not slow" --durations=15

lint: install  ## ruff: pyflakes and import order (configured in pyproject.toml)
	$(BIN)/ruff check .

bench: install  ## the grammar mask's cost per token at 256 and 2,048 tokens (other benchmarks: benchmarks/)
	$(BIN)/python benchmarks/bench_grammar_mask.py
