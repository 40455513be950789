#!/usr/bin/env bash
# GPU checks and the side-by-side GPU training benchmark, for a machine with a real GPU and a
# Vulkan driver (burn's wgpu backend) and a CUDA build of PyTorch (the official code's side).
#
#   BIN=DIR bash bench/run_gpu.sh RESULTS_DIR
#
# BIN holds release builds of three programs made on the build machine (the GPU machine needs no
# Rust toolchain): `parity` and `train_loop` (the test binaries of core/tests, found with
# `cargo test --release --workspace --no-run`) and `bench_train` (the example). Run from the
# repository root. It runs, each under a time limit:
#   1. the parity test on the GPU (every fixture, `SFTOK_REQUIRE_WGPU=1`: no adapter is a failure);
#   2. the data-parallel tests: two CPU replicas, and the GPU with the CPU as a second device;
#   3. training throughput at the `demo` preset for each stage, Rust on wgpu beside the official
#      PyTorch code on CUDA (bench/pytorch_train.py --device cuda), batch 16 and 64.
# Logs and JSON lines go to RESULTS_DIR; BENCHMARKS.md has the figures of the last run.
set -uo pipefail
out=${1:?usage: BIN=DIR $0 RESULTS_DIR}
bin=${BIN:?BIN must name the folder of prebuilt binaries}
official=${SFTOK_OFFICIAL:?SFTOK_OFFICIAL must name the official SFTok code}
python=${PYTHON:-python3}
mkdir -p "$out"
export SFTOK_REQUIRE_WGPU=1
export SFTOK_PARITY_DIR=${SFTOK_PARITY_DIR:-core/tests/data/parity/public}
started=$(date +%s)
budget=${BUDGET_S:-420} # the benchmark rows stop being started after this many seconds
# The first wgpu process on a machine compiles and autotunes every kernel (over 90 s on an H200);
# later ones reuse burn's autotune cache.
row_limit=${ROW_LIMIT_S:-180}
elapsed() { echo $(($(date +%s) - started)); }

(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true) | tee "$out/gpu.txt"

echo "== parity on the GPU ($(elapsed) s)"
timeout 150 "$bin/parity" parity_wgpu --nocapture 2>&1 | tee "$out/parity.log" | grep -E "wgpu|max|test result|panicked" | tail -n 40

echo "== data parallel ($(elapsed) s)"
timeout 150 "$bin/train_loop" data_parallel --nocapture 2>&1 | tee "$out/train_loop.log" | grep -E "data parallel|test |test result|panicked"

echo "== training throughput, demo preset ($(elapsed) s)"
for batch in 16 64; do
    for stage in stage1 stage2 stage3 teacher; do
        if [ "$(elapsed)" -gt "$budget" ]; then
            echo "time budget spent: $stage at batch $batch and later rows not run"
            break 2
        fi
        timeout "$row_limit" "$bin/bench_train" --preset demo --stage "$stage" --batch "$batch" --steps 10 --warmup 3 \
            --device wgpu 2>>"$out/bench.log" | tail -n 1 | tee -a "$out/train_gpu.jsonl"
        timeout "$row_limit" "$python" bench/pytorch_train.py --official "$official" --stage "$stage" --batch "$batch" \
            --steps 10 --warmup 3 --threads 16 --device cuda 2>>"$out/bench.log" | tail -n 1 | tee -a "$out/train_gpu.jsonl"
    done
done
echo "== done ($(elapsed) s)"
