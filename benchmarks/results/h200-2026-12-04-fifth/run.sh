#!/bin/bash
# H200 call (2026-12-04, fifth session): where a step's GPU time goes by kernel kind (GEMM, attention, the rest), per
# layer, beside the planner's split (CostModel.layer_compute), at widths 1024-4096 and for the two 1B presets.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.sm,temperature.gpu --format=csv | tee $OUT/smi.txt
timeout 420 python3 benchmarks/planner_kernels.py --sections step --presets llama-1b yuan-1b --widths 1024,2048,3072,4096 \
  --micro-batch 4 --repeats 5 --json $OUT/step_kinds.json > $OUT/step_kinds.log 2>&1
echo rc=$?; grep -v '^\[{' $OUT/step_kinds.log | tail -5
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/step_kinds.json"))
for r in d.get("step", []):
    if not isinstance(r, dict) or "layer_gpu_s" not in r: print(r); continue
    m, p = r["layer_gpu_s"], r["pred_layer_s"]
    print(r["model"], " ".join(f"{k} {1e3*m[k]:.2f}/{1e3*p[k]:.2f}ms" for k in p), f"step {r['step_s']*1e3:.1f}/{r['pred_step_s']*1e3:.1f}")
PY
