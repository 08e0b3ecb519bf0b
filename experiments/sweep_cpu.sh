#!/usr/bin/env bash
# The sweep behind scale=cpu (docs/training.md): about 5 minutes of compute per run on 2 cores,
# steps scaled by each shape's step cost relative to the base (measured side by side), compared on
# val bits per note over the recipe's fixed 64 validation songs. Usage (from the repo root):
#   bash experiments/sweep_cpu.sh [RUN ...]      # default: every run below; outputs/sweep/<run>/
# Each run's metrics.json holds steps, wall time and val bits/note.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA_DIR=${DATA_DIR:-../shared/midi}

declare -A STEPS=([base]=240 [lr1e-3]=240 [lr4e-3]=240 [wide384]=190 [deep6]=150 [ctx256]=240)
declare -A ARGS=([base]="" [lr1e-3]="optim.lr=1e-3 optim.min_lr=1e-4" [lr4e-3]="optim.lr=4e-3 optim.min_lr=4e-4"
                 [wide384]="model.n_embd=384 model.n_head=6" [deep6]="model.n_layer=6"
                 [ctx256]="model.block_size=256 datamodule.batch_size=32")
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(base lr1e-3 wide384 ctx256 deep6 lr4e-3)
for name in "${runs[@]}"; do
  steps=${STEPS[$name]}
  echo "== $name: $steps steps, $(date +%T)"
  # shellcheck disable=SC2086
  $PY train.py +experiment=round3 data=real paths.data_dir="$DATA_DIR" scale=cpu \
    trainer.max_steps="$steps" optim.warmup_steps=25 trainer.val_check_interval="$steps" \
    logger=csv callbacks.samples=null round="sweep-$name" hydra.run.dir="outputs/sweep/$name" ${ARGS[$name]} \
    2>&1 | grep "\[train\] done"
done
