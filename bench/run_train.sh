#!/usr/bin/env bash
# Side-by-side CPU benchmark of training throughput at the `demo` preset (64 px, f8 teacher):
# each stage with the Rust trainer's step functions and with the official PyTorch code, batch 16,
# 2 threads, random images (no data loading, no EMA). Appends JSON lines to $1. See BENCHMARKS.md.
set -euo pipefail
out=${1:?usage: $0 RESULTS_FILE}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
target=${CARGO_TARGET_DIR:-$here/../target}
steps=${STEPS:-5}
batch=${BATCH:-16}
(cd "$here/.." && cargo build --release --workspace --examples >&2)
for stage in ${STAGES:-stage1 stage2 stage3 teacher}; do
    echo "== rust: $stage" >&2
    "$target/release/examples/bench_train" --preset demo --stage "$stage" --batch "$batch" --steps "$steps" --warmup 1 | tail -n 1 >> "$out"
    echo "== pytorch: $stage" >&2
    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 "${PYTHON:-/work/venv-torch/bin/python}" "$here/pytorch_train.py" \
        --official "${SFTOK_OFFICIAL:-/work/sftok-official}" --stage "$stage" --batch "$batch" \
        --steps "$steps" --warmup 1 --threads 2 | tail -n 1 >> "$out"
done
