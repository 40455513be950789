#!/usr/bin/env bash
# Trains the bundled demo generator (assets/models/generator) and makes the README's figures.
#
#   scripts/demo_generator.sh PART [PART ...]
#
# PART: classes | train | bundle | figures
#   classes  class folders of links from the photo groups in the file names (generator_classes.sh)
#   train    `sftok train generator` on the bundled SFVR model's tokens (resumes when cut short)
#   bundle   copies the run's model into assets/models/generator and its metrics into docs/runs
#   figures  docs/generator_samples.png (each class, each sample beside its nearest training
#            photo), docs/generator_curves.png (held-out curves)
#
# Environment: DATA (default ../shared/data/train), RUNS (default runs), DEVICE, SFTOK
# (scripts/common.sh), STEPS (default 4000), TOKENIZER (default assets/models/sfvr).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
source scripts/common.sh

STEPS=${STEPS:-2000}
TOKENIZER=${TOKENIZER:-assets/models/sfvr}
CLASSES=${CLASSES:-$RUNS/generator-data}

for part in "$@"; do
  case $part in
    classes)
      scripts/generator_classes.sh "$DATA" "$CLASSES"
      ;;
    train)
      # shellcheck disable=SC2046
      $SFTOK train generator --data "$CLASSES" --tokenizer "$TOKENIZER" --out "$RUNS/generator" \
        --steps "$STEPS" --batch-size 64 --eval-every 250 --log-every 50 --device "$DEVICE" \
        $(resume_flag "$RUNS/generator")
      ;;
    bundle)
      mkdir -p assets/models/generator docs/runs
      cp "$RUNS/generator/model/config.json" "$RUNS/generator/model/model.safetensors" assets/models/generator/
      cp "$RUNS/generator/metrics.jsonl" docs/runs/generator.jsonl
      ;;
    figures)
      classes=()
      for d in "$CLASSES"/*/; do classes+=(--class "$(basename "$d")"); done
      $SFTOK generate --generator assets/models/generator --tokenizer "$TOKENIZER" "${classes[@]}" \
        --count 3 --seed 0 --reference "$CLASSES" --device "$DEVICE" --out docs/generator_samples.png
      $SFTOK curves docs/runs/generator.jsonl --out docs/generator_curves.png
      ;;
    *)
      echo "unknown part $part: classes, train, bundle or figures" >&2
      exit 2
      ;;
  esac
done
