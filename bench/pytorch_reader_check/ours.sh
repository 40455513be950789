#!/usr/bin/env bash
# The same damaged copies through SFTok Studio's own reader (sftok import).
S=${CARGO_TARGET_DIR:-$HOME/.cache/sftok-studio/target}/release/sftok
for src in $(cd "$(dirname "$0")/../.." && pwd)/tests/data/official/pytorch_model.bin; do
python3 - "$src" <<'PY'
import sys,os
b=open(sys.argv[1],'rb').read(); n=len(b)
os.makedirs('/tmp/pytorch-reader-check-ours',exist_ok=True)
k=0
for i in range(1,64):
    open(f'/tmp/pytorch-reader-check-ours/{k:03d}.bin','wb').write(b[:n*i//64]); k+=1
for i in range(256):
    at=(i*7919+13)%n; c=bytearray(b); c[at]^=0xff
    open(f'/tmp/pytorch-reader-check-ours/{k:03d}.bin','wb').write(bytes(c)); k+=1
PY
panics=0; errors=0; ok=0
for f in /tmp/pytorch-reader-check-ours/*.bin; do
  rm -rf /tmp/pytorch-reader-check-out
  out=$($S import --weights $f --config $(cd "$(dirname "$0")/../.." && pwd)/tests/data/official/config.json --out /tmp/pytorch-reader-check-out 2>&1); rc=$?
  if echo "$out" | grep -q panicked; then panics=$((panics+1)); echo "PANIC $f: $(echo "$out" | grep panicked | head -1)";
  elif [ $rc -ne 0 ]; then errors=$((errors+1)); else ok=$((ok+1)); fi
done
echo "$(basename $src): 319 damaged copies: $errors refused, $ok imported, $panics panics"
rm -rf /tmp/pytorch-reader-check-ours
done
