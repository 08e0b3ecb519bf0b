# Two commands for a newcomer:  `make train`  (install + train on the bundled corpus, offline)
#                               `make test`   (install + the whole test suite)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install train train-real test bench

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python
	# The CPU wheel of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.4,<2.15"
	$(BIN)/pip install -q -e ".[dev]"

train: install
	$(BIN)/python train.py

# The 2-core recipe on the real piano corpora in ../shared/midi (about 30 minutes of training).
train-real: install
	$(BIN)/python train.py +experiment=round3 data=real paths.data_dir=../shared/midi scale=cpu

test: install
	WANDB_MODE=offline WANDB_SILENT=true $(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/run_all.py
