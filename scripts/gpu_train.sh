#!/usr/bin/env bash
# Retrain the embedded model on a lent GPU machine in one call (no network there): render each training pool
# once, train one or more runs side by side on the GPU until a common deadline, evaluate each run, and pack
# the weights for the trip back. From the repository root, with the transformers wheel in .device/wheels
# (see scripts/gpu_bench.sh):
#   bash scripts/gpu_train.sh                                    # one run: the default recipe at GPU batch size
#   RUNS=$'seed0 --seed 0\nseed1 --seed 1' bash scripts/gpu_train.sh   # two runs sharing one pool (the shipped
#                                                                # weights are seed0 of this command)
# A line of RUNS is "name extra-train-args"; runs with the same --config share a pool. SECONDS_TOTAL (default 540)
# is the whole script's budget, EVAL_S (default 75) of it kept for evaluation (EVAL_N=0: none, evaluate at home).
# PARTIAL (default 0) is train's --partial: the fraction of partial scenes in the pool. Writes under $OUT:
# eval_<name>.json and weights.tar.part-* (`cat weights.tar.part-* | tar x` gives <name>/ and <name>.train.log).
# Copy a run's weights over vlm_ros/embedded/weights only if its evaluation beats the shipped model's.
# Sizing, measured on the lent H200 machine (16 cores): rendering 8,000 scenes took 48 s; two runs side by side
# trained at 0.060 s/step each (batch 128; 0.053 for one run alone), 5,700 steps in 6.8 minutes; evaluating two
# runs took under 50 s; a pool pickles to about 100 kB a scene. The whole two-run call took 497 s.
set -uo pipefail
OUT="${OUT:-/tmp/vlm_train}"; mkdir -p "$OUT"
WORK=/tmp/vlm_train_work; mkdir -p "$WORK"
SECONDS_TOTAL=${SECONDS_TOTAL:-540} EVAL_S=${EVAL_S:-75} POOL=${POOL:-8000}
deadline=$((SECONDS + SECONDS_TOTAL - EVAL_S))
if compgen -G ".device/wheels/transformers-*.whl" >/dev/null; then
  python3 -m pip install -q --no-deps --target /tmp/vlm_tf .device/wheels/transformers-*.whl >/dev/null 2>&1
fi
export PYTHONPATH="/tmp/vlm_tf:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
RUNS="${RUNS:-default}"
partial=(--partial "${PARTIAL:-0}")
common=(--batch "${BATCH:-128}" --pool "$POOL" --steps "${STEPS:-40000}" "${partial[@]}")

config_of() { grep -o -- '--config [^ ]*' <<<"$1" | cut -d' ' -f2; }
pool_of() { local c; c=$(config_of "$1"); echo "$WORK/pool_$(basename "${c:-default}" .json).pkl"; }

# 1. pools, one per distinct --config, rendered side by side on all cores
declare -A pool_config=()
while read -r _ args; do pool_config["$(pool_of "$args")"]=$(config_of "$args"); done <<<"$RUNS"
cores=$(nproc); pids=()
for p in "${!pool_config[@]}"; do
  cfg=${pool_config[$p]}
  python3 -m vlm_ros.embedded.train --out "$WORK/unused" --steps 0 --pool-cache "$p" --pool "$POOL" \
    --workers $((cores / ${#pool_config[@]})) "${partial[@]}" ${cfg:+--config "$cfg"} 2>&1 | grep "rendered" &
  pids+=($!)
done
wait "${pids[@]}"

# 2. the runs, side by side, all stopping by the deadline
pids=()
while read -r name args; do
  minutes=$(python3 -c "print(max(0.5, ($deadline - $SECONDS) / 60))")
  # shellcheck disable=SC2086
  python3 -m vlm_ros.embedded.train --out "$WORK/$name" --pool-cache "$(pool_of "$args")" \
    --minutes "$minutes" "${common[@]}" $args >/dev/null 2>&1 &
  pids+=($!)
done <<<"$RUNS"
wait "${pids[@]}"
while read -r name _; do grep -E "planning|saved" "$WORK/$name.train.log" | tail -2 | sed "s/^/$name: /"; done <<<"$RUNS"

# 3. pack the weights first (files come back at most 16 MiB each), then evaluate side by side
names=$(cut -d' ' -f1 <<<"$RUNS" | while read -r n; do [ -f "$WORK/$n/model.safetensors" ] && echo "$n"; done)
# shellcheck disable=SC2086
(cd "$WORK" && tar -cf - $names ./*.train.log) | split -b 15M - "$OUT/weights.tar.part-"
[ "${EVAL_N:-100}" -gt 0 ] || exit 0
for n in $names; do
  timeout $((SECONDS_TOTAL - SECONDS)) \
    python3 -m vlm_ros.embedded.evaluate --weights "$WORK/$n" --n "${EVAL_N:-100}" --threads $((cores > 4 ? cores / 4 : 1)) >"$OUT/eval_$n.json" 2>/dev/null &
done
wait
for n in $names; do echo "$n: $(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: v for k, v in d.items() if not isinstance(v, (dict, list))})" "$OUT/eval_$n.json" 2>&1 | tail -1)"; done
