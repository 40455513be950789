#!/usr/bin/env bash
# PyTorch half of the CPU benchmark: batch 1 and batch 8, each in its own process so that the peak RSS
# (ru_maxrss) belongs to one configuration. Appends one JSON line per configuration to the file $1.
#
#   bash bench/run_pytorch.sh results.jsonl
#
# Environment (defaults in brackets):
#   SFTOK_OFFICIAL  root of the official SFTok work tree     [/work/sftok-official]
#   PYTHON          interpreter with torch, omegaconf, einops [/work/venv-torch/bin/python]
#   THREADS [2]   ITERS [5]   SIZE (b|tiny) [b]   BATCHES ["1 8"]
#   RECON [1]: 0 skips the reconstruction runs above
# Training throughput (bench/pytorch_train.py, `demo` sizes; off unless TRAIN_STAGES is set):
#   TRAIN_STAGES  e.g. "stage1 stage2 stage3 teacher" [""]
#   TRAIN_BATCH [16]   TRAIN_STEPS [10]   TRAIN_WARMUP [2]   (THREADS as above)
set -euo pipefail

out=${1:?usage: $0 RESULTS_FILE (JSON lines are appended)}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
official=${SFTOK_OFFICIAL:-/work/sftok-official}
python=${PYTHON:-/work/venv-torch/bin/python}
threads=${THREADS:-2}
iters=${ITERS:-5}
size=${SIZE:-b}
batches=${BATCHES:-"1 8"}

# Keep OpenMP / MKL pools to the same thread count as torch.set_num_threads.
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads

recon=${RECON:-1}
train_stages=${TRAIN_STAGES:-}
train_batch=${TRAIN_BATCH:-16}
train_steps=${TRAIN_STEPS:-10}
train_warmup=${TRAIN_WARMUP:-2}

[ "$recon" = 0 ] && batches=""
for batch in $batches; do
    echo "== pytorch: size $size, batch $batch, threads $threads, iters $iters" >&2
    line=$("$python" "$here/pytorch_reconstruct.py" --official "$official" \
        --batch "$batch" --iters "$iters" --threads "$threads" --size "$size" | tail -n 1)
    echo "$line" >> "$out"
    echo "$line" >&2
done

for stage in $train_stages; do
    echo "== pytorch train: stage $stage, batch $train_batch, threads $threads, steps $train_steps (+$train_warmup warm-up)" >&2
    line=$("$python" "$here/pytorch_train.py" --official "$official" --stage "$stage" \
        --batch "$train_batch" --steps "$train_steps" --warmup "$train_warmup" --threads "$threads" | tail -n 1)
    echo "$line" >> "$out"
    echo "$line" >&2
done
