#!/usr/bin/env bash
# Runs the probe_race example (core/examples/probe_race.rs) RUNS times in MODE (old | new) and
# counts the runs that did not exit cleanly, with the first line of each failure's output.
#   scripts/probe_race.sh MODE [RUNS] [THREADS] [ROUNDS]
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:?old or new}; runs=${2:-100}; threads=${3:-4}; rounds=${4:-3}
target=${CARGO_TARGET_DIR:-$HOME/.cache/sftok-studio/target}
# The whole workspace, so that the dependencies keep the feature set everything else is built
# with (`-p sftok-core` alone would rebuild burn with another).
cargo build --release -q --workspace --example probe_race
bin=$target/release/examples/probe_race
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg-runtime-$(id -u)}
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
failed=0
for i in $(seq 1 "$runs"); do
  out=$("$bin" "$mode" "$threads" "$rounds" 2>&1)
  rc=$?
  if [ $rc -ne 0 ]; then
    failed=$((failed + 1))
    echo "run $i: exit $rc: $(echo "$out" | grep -v '^\s*$' | tail -1)"
  fi
done
echo "$mode: $failed of $runs runs failed ($threads threads x $rounds probes each)"
