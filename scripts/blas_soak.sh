#!/usr/bin/env bash
# The BLAS products of every shape the model uses, from 8 threads at once with guard zones
# around every buffer, under valgrind's memory checker (issue 19): any write outside a buffer,
# use after free or invalid read fails the run.
#
#   scripts/blas_soak.sh [ROUNDS]        (default 1: about 6.5 minutes on 2 cores)
#
# Needs valgrind (`apt install valgrind`) and OpenBLAS (`apt install libopenblas0-pthread`).
# OPENBLAS_CORETYPE is unset for the run: valgrind does not run AVX-512 instructions, and hides
# AVX-512 from cpuid, so the library and the built-in kernels pick their AVX2 paths by themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sftok-studio/target}
library=${SFTOK_BLAS:-/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0}
binary=$(cargo test --release --workspace --lib --no-run --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*sftok_core-[^"]*"' | head -1 | cut -d'"' -f4)
[ -x "$binary" ] || { echo "could not build the sftok-core test binary" >&2; exit 1; }
unset OPENBLAS_CORETYPE
OPENBLAS_NUM_THREADS=1 SFTOK_BLAS=$library SFTOK_REQUIRE_BLAS=1 SFTOK_BLAS_SOAK_ROUNDS=${1:-1} \
  valgrind --error-exitcode=1 -q "$binary" --ignored --exact kernels::blas::tests::concurrent_products_soak
