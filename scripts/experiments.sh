#!/usr/bin/env bash
# The paper's three experiments at demo scale, from one stage-1 checkpoint (docs/experiments.md):
#   1. SFVR against vanilla, SEEDS stage-2 seeds each, compared image by image with 95% intervals;
#   2. the replacement probability 0.5 / 0.8 / 1.0 (seed 0);
#   3. the step sweep 1, 2, 4, 8, 16 for every model.
# Stage-2 runs resume when cut short, and finished ones are skipped, so the script can be run in
# parts. Results: $OUT/eval.json (sftok eval), docs/experiments_results.md and
# docs/experiments.png (sftok paired).
#
# Environment: RUNS (where the chain's stage1, sfvr and vanilla runs are; seed 0 of each arm is
# the chain's own run), DATA, EVAL, SFTOK, DEVICE (scripts/common.sh), STAGE2_STEPS, SEEDS
# (default "0 1 2").
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
source scripts/common.sh
STAGE2_STEPS=${STAGE2_STEPS:-300}
SEEDS=${SEEDS:-0 1 2}
OUT=${OUT:-$RUNS/experiments}

stage1="$RUNS/stage1"
if [ ! -f "$stage1/model/model.safetensors" ]; then
  echo "no stage-1 model in $stage1: run scripts/demo_chain.sh teacher stage1 first" >&2
  exit 2
fi

finished() {
  [ -d "$1/checkpoints/step_$(printf %08d "$STAGE2_STEPS")" ]
}

stage2() {
  local out=$1
  shift
  if finished "$out"; then
    echo "$out: finished"
    return
  fi
  train "$out" stage2 --init "$stage1" --steps "$STAGE2_STEPS" "$@"
}

sfvr=() vanilla=()
for seed in $SEEDS; do
  if [ "$seed" = 0 ]; then s_out="$RUNS/sfvr" v_out="$RUNS/vanilla"; else
    s_out="$OUT/sfvr-seed$seed" v_out="$OUT/vanilla-seed$seed"; fi
  stage2 "$s_out" --seed "$seed"
  stage2 "$v_out" --seed "$seed" --vanilla
  sfvr+=("$s_out/model") vanilla+=("$v_out/model")
done
probs=()
for p in 0.5 0.8; do
  stage2 "$OUT/sfvr-p$p" --replace-prob "$p"
  probs+=("$OUT/sfvr-p$p/model")
done

models=()
for m in "${sfvr[@]}" "${vanilla[@]}" "${probs[@]}"; do models+=(--model "$m"); done
$SFTOK eval "${models[@]}" --data "$EVAL" --steps 1,2,4,8,16 --device "$DEVICE" \
  --json "$OUT/eval.json" --markdown "$OUT/eval.md" --plot "$OUT/eval.png"

join() { local IFS=,; echo "$*"; }
$SFTOK paired --eval "$OUT/eval.json" \
  --group "sfvr=$(join "${sfvr[@]}")" \
  --group "vanilla=$(join "${vanilla[@]}")" \
  --group "p0.5=${probs[0]}" \
  --group "p0.8=${probs[1]}" \
  --group "p1.0=${sfvr[0]}" \
  --versus sfvr:vanilla \
  --versus "p1.0:p0.5" \
  --versus "p1.0:p0.8" \
  --markdown docs/experiments_results.md --plot docs/experiments.png
