#!/usr/bin/env bash
# GPU checks and benchmarks for the lent GPU machine (no network there). Run from the repository root with
# the transformers wheel this project pins carried in .device/wheels (the machine's image has an older one):
#   mkdir -p .device/wheels && pip download --no-deps -d .device/wheels transformers==5.24.0
# SKIP_STATIC=1 skips the static-cache generate() baseline (it compiles for 30-70 s); COMPILE=1 also compiles the
# engine's decode step (torch.compile, about a minute per model; 1.7x on the 0.5B model, 3B not yet measured).
# Writes logs and JSON under $OUT (default /tmp/vlm_gpu).
set -uo pipefail
OUT="${OUT:-/tmp/vlm_gpu}"; mkdir -p "$OUT"
python3 -m pip install -q --no-deps --target /tmp/vlm_tf .device/wheels/transformers-*.whl >/dev/null 2>&1
export PYTHONPATH="/tmp/vlm_tf:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
echo "== parity: engine (lean decoder in a CUDA graph, graphed vision) vs generate(), tiny LLaVA fp32 on CUDA"
timeout 90 python3 - <<'PY' 2>&1 | grep -v "Loading weights\|Writing model" | tee "$OUT/parity.txt"
import tempfile, numpy as np, torch
from vlm_ros.core.types import Frame, Request, Task
from vlm_ros.engine import TorchEngine
from vlm_ros.models.llava import LlavaAdapter
from vlm_ros.testing.tiny import build_tiny_llava
a = LlavaAdapter.from_pretrained(build_tiny_llava(tempfile.mkdtemp()), device="cuda")
e = TorchEngine(a)
for seed in range(3):
    img = (np.random.default_rng(seed).random((120, 160, 3)) * 255).astype(np.uint8)
    inp = a.prepare(Frame(img, seed + 1, camera="c"), Request(Task.ANSWER, "where is the red ball ?"))
    ours = e.generate(inp, 40).token_ids
    ref = a.model.generate(**inp.tensors, max_new_tokens=40, do_sample=False)[0, inp.prompt_length:].tolist()
    ref = ref[: next((i for i, t in enumerate(ref) if t in a.eos_token_ids), len(ref))]
    print(f"seed {seed}: {len(ours)} tokens, identical to generate(): {ours == ref}")
PY
for model in so400m-qwen2-0.5b qwen2.5-vl-3b; do
  echo "== $model, bf16${COMPILE:+, compiled decode step}"
  timeout "${BENCH_TIMEOUT:-150}" python3 -m vlm_ros.tools.benchmark_engine --model "$model" --device cuda \
    --dtype bfloat16 --tokens 64 --repeats 3 ${SKIP_STATIC:+--skip-static} ${COMPILE:+--compile} \
    --json "$OUT/bench_$model.json" 2>&1 \
    | grep -v "Loading weights\|Writing model" | tee "$OUT/bench_$model.txt"
done
