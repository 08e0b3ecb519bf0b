#!/usr/bin/env bash
# The measurement behind data.infill_share (docs/training.md, "Infilling"): the 2-core recipe
# (`make train-real`) trained with each share and seed, every run evaluated on the same held-out
# test pieces, left to right and (share > 0) with --infill. About 28 minutes of training and
# 10-15 of evaluation per run on 2 quiet cores with native bf16 (avx512_bf16); on an AVX2-only
# VM, TRAINER=cpu trains in fp32 at about 3,200 tokens/s, about 105 minutes a run. Run it when
# nothing else trains.
#   bash experiments/infill_sweep.sh [SHARE ...]     # default: 0 0.25 0.5; SEEDS="0 1", TRAINER=cpu_bf16 by default
# Writes outputs/infill/s<SHARE>-seed<SEED>/ (the runs) and experiments/results/infill/s<SHARE>-seed<SEED>/
# (evaluation.json, report.md, piano rolls and audio), resuming: a finished run or evaluation is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA_DIR=${DATA_DIR:-../shared/midi}
SEEDS=${SEEDS:-"0 1"}
TRAINER=${TRAINER:-cpu_bf16}   # the recipe's; TRAINER=cpu (fp32) on a CPU without native bf16, for every share alike
PIECES=${PIECES:-outputs/test-pieces-real}   # python experiments/link_pieces.py cache/shards/real-<key> outputs/test-pieces-real
shares=("$@")
[ ${#shares[@]} -gt 0 ] || shares=(0 0.25 0.5)
if [ "$TRAINER" = cpu_bf16 ] && ! grep -q -E 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then
  echo "warning: this CPU has no avx512_bf16 or amx_bf16, so trainer=cpu_bf16 emulates bf16 and trains several times slower"
  echo "         than fp32; TRAINER=cpu trains in fp32 (use it for every share and seed of one table)"
fi
[ -d "$PIECES" ] || { echo "no test pieces at $PIECES: link them with experiments/link_pieces.py (README)"; exit 2; }
for share in "${shares[@]}"; do
  for seed in $SEEDS; do
    run="outputs/infill/s$share-seed$seed"
    res="experiments/results/infill/s$share-seed$seed"
    if [ ! -f "$run/metrics.json" ]; then
      resume=()
      [ -f "$run/checkpoints/last.ckpt" ] && resume=("ckpt_path=$run/checkpoints/last.ckpt")
      echo "== train share $share seed $seed, $(date +%T)"
      $PY train.py +experiment=round3 data=real paths.data_dir="$DATA_DIR" scale=cpu trainer="$TRAINER" \
        tokenizer.key_tokens=true data.infill_share="$share" seed="$seed" logger=csv round="infill-s$share" \
        hydra.run.dir="$run" "${resume[@]}" 2>&1 | grep --line-buffered "\[train\]"
    fi
    if [ ! -f "$res/evaluation.json" ]; then
      infill=()
      [ "$share" != "0" ] && infill=(--infill)
      echo "== evaluate share $share seed $seed, $(date +%T)"
      $PY experiments/evaluate.py "$run/checkpoints/last.ckpt" --real "$PIECES" --n 48 --temperature 0.9 \
        --keep-prompt --seed "$seed" --out "$res" "${infill[@]}" | tail -12
    fi
  done
done
