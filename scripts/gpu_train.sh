#!/usr/bin/env bash
# Retrain the embedded model on the lent GPU machine in one call, then evaluate it (no network there).
# Same carried transformers wheel as scripts/gpu_bench.sh (.device/wheels). From the repository root:
#   bash scripts/gpu_train.sh                     # writes $OUT/weights, $OUT/weights.train.log, $OUT/eval.json
# MINUTES (default 6) is the training budget including rendering the pool; the whole script takes about
# MINUTES + 2. Copy $OUT/weights over vlm_ros/embedded/weights only if eval.json beats the shipped model.
set -euo pipefail
OUT="${OUT:-/tmp/vlm_train}"; mkdir -p "$OUT"
if compgen -G ".device/wheels/transformers-*.whl" >/dev/null; then
  python3 -m pip install -q --no-deps --target /tmp/vlm_tf .device/wheels/transformers-*.whl >/dev/null 2>&1
fi
export PYTHONPATH="/tmp/vlm_tf:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m vlm_ros.embedded.train --out "$OUT/weights" --minutes "${MINUTES:-6}" --batch "${BATCH:-128}" \
  --pool "${POOL:-20000}" --steps "${STEPS:-40000}" ${TRAIN_ARGS:-} 2>&1 | tr '\r' '\n' | grep -v "^train:" || true
test -f "$OUT/weights/model.safetensors"
python3 -m vlm_ros.embedded.evaluate --weights "$OUT/weights" --n "${EVAL_N:-100}" | tee "$OUT/eval.json"
