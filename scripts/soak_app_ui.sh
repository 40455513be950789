#!/usr/bin/env bash
# Issue 19's soak: runs the `app_ui` test binary RUNS times as CI runs it and counts how each run
# ended: passed (exit 0), a test failed (exit 101), or the process died (SIGABRT 134, SIGSEGV 139:
# the heap corruption at exit). Each death's output is kept in OUTDIR/run_N.log, with a core dump
# when the kernel lets one be written.
#   scripts/soak_app_ui.sh [RUNS] [BLAS] [OUTDIR]
# BLAS: `off` (the gemm crate, the default path), `lib` (Debian's OpenBLAS, as CI's BLAS pass runs
# it: OPENBLAS_NUM_THREADS=1, SkylakeX kernels on AVX-512 CPUs) or anything SFTOK_BLAS takes.
# BIN=path soaks a test binary built elsewhere (a control built from other code) instead.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-200}; blas=${2:-lib}; outdir=${3:-/tmp/soak-app-ui-$blas}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sftok-studio/target}
mkdir -p "$outdir"
# The test binary's path, built with the workspace's one feature set.
bin=${BIN:-}
[ -n "$bin" ] || bin=$(cargo test --release --workspace --test app_ui --no-run --message-format=json 2>/dev/null \
  | grep -o '"executable":"[^"]*app_ui[^"]*"' | tail -1 | cut -d'"' -f4)
[ -x "$bin" ] || { echo "could not build the app_ui test binary" >&2; exit 2; }
# A copy, so that a build during the soak does not swap the binary under it.
[ "$bin" = "$outdir/app_ui" ] || cp "$bin" "$outdir/app_ui"
bin=$outdir/app_ui

export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg-runtime-$(id -u)}
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
case $blas in
  lib)
    export SFTOK_BLAS=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0
    [ -e "$SFTOK_BLAS" ] || { echo "OpenBLAS is not installed (apt install libopenblas0-pthread)" >&2; exit 2; }
    export OPENBLAS_NUM_THREADS=1
    grep -qw avx512f /proc/cpuinfo && export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}
    ;;
  *) export SFTOK_BLAS=$blas ;;
esac
ulimit -c unlimited 2>/dev/null || true

passed=0; failed=0; died=0
start=$(date +%s)
for i in $(seq 1 "$runs"); do
  # Tests run from the package's folder, as `cargo test` runs them.
  (cd app && "$bin" >"$outdir/last.log" 2>&1)
  rc=$?
  case $rc in
    0) passed=$((passed + 1)) ;;
    101) failed=$((failed + 1)); cp "$outdir/last.log" "$outdir/run_$i.log"
         echo "run $i: a test failed: $(grep -m1 -E 'panicked|FAILED' "$outdir/run_$i.log")" ;;
    *) died=$((died + 1)); cp "$outdir/last.log" "$outdir/run_$i.log"
       [ -e app/core ] && mv app/core "$outdir/core_$i"
       echo "run $i: died with exit $rc: $(grep -v '^\s*$' "$outdir/run_$i.log" | tail -1)" ;;
  esac
  echo "$i $rc $(( $(date +%s) - start ))" >>"$outdir/runs.txt"
done
echo "app_ui x $runs (SFTOK_BLAS=$SFTOK_BLAS${OPENBLAS_CORETYPE:+, OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE}): $passed passed, $failed with a failed test, $died died; $(( $(date +%s) - start )) s"
