#!/usr/bin/env bash
# Side-by-side CPU benchmark of 8-step reconstruction at the official SFTok-B size (random weights,
# 256x256): the Rust/burn implementation and the official PyTorch code, batch 1 and 8 (or the
# batch sizes in BATCHES), 2 threads.
# Appends JSON lines to $1. Needs the official code (SFTOK_OFFICIAL) and a Python with torch (PYTHON);
# see BENCHMARKS.md.
set -euo pipefail
out=${1:?usage: $0 RESULTS_FILE}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
target=${CARGO_TARGET_DIR:-$here/../target}
ITERS_1=${ITERS_1:-3}
ITERS_8=${ITERS_8:-2}
(cd "$here/.." && cargo build --release --workspace --examples >&2)
export RAYON_NUM_THREADS=2
for batch in ${BATCHES:-1 8}; do
    iters=$([ "$batch" = 1 ] && echo "$ITERS_1" || echo "$ITERS_8")
    echo "== rust: batch $batch, iters $iters" >&2
    "$target/release/examples/bench_reconstruct" --preset sftok-b --batch "$batch" --iters "$iters" | tail -n 1 >> "$out"
    echo "== pytorch: batch $batch, iters $iters" >&2
    THREADS=2 ITERS=$iters BATCHES=$batch bash "$here/run_pytorch.sh" "$out"
done
