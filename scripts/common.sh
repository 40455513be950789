# Sourced by demo_chain.sh and experiments.sh: the shared settings and the one training call,
# so that the experiments' extra seeds are trained exactly as the chain's own runs.
#
# Environment: DATA (training photos, default ../shared/data/train), EVAL (held-out photos,
# default ../shared/data/eval), RUNS (run folders, default runs), DEVICE (auto, cpu or wgpu),
# SFTOK (the command, default: the release build of this checkout).

DATA=${DATA:-../shared/data/train}
EVAL=${EVAL:-../shared/data/eval}
RUNS=${RUNS:-runs}
DEVICE=${DEVICE:-auto}
SFTOK=${SFTOK:-cargo run --release -q -p sftok-app --}

# `--resume` when the run has a checkpoint, so the same command starts or continues a part.
resume_flag() {
  if compgen -G "$1/checkpoints/step_*/state.json" >/dev/null; then echo --resume; fi
}

# train OUT STAGE ARGS...: batch 16, crops up to 2x the size, held-out measurements on EVAL.
train() {
  local out=$1
  shift
  # shellcheck disable=SC2046
  $SFTOK train "$@" --out "$out" --data "$DATA" --eval-data "$EVAL" --device "$DEVICE" \
    --batch-size 16 --max-scale 2 $(resume_flag "$out")
}
