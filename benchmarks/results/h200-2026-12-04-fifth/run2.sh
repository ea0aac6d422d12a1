#!/bin/bash
# Second H200 call (2026-12-04, fifth session): the longest kernels of flopwise's eager step (which attention backend
# SDPA takes, which elementwise kernels), and the same steps with each block compiled (train.compile = true).
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
python3 -c "import torch; print(torch.__version__, 'cudnn', torch.backends.cudnn.version())"
timeout 150 python3 benchmarks/planner_kernels.py --sections step --widths 2048 --micro-batch 4 --repeats 3 --top-kernels 40 \
  --json $OUT/step_top.json > $OUT/step_top.log 2>&1; echo eager rc=$?
timeout 330 python3 benchmarks/planner_kernels.py --sections step --widths 1024,2048,4096 --micro-batch 4 --repeats 3 \
  --top-kernels 20 --step-compile --json $OUT/step_compiled.json > $OUT/step_compiled.log 2>&1; echo compiled rc=$?
python3 - <<'PY'
import json, os
for f in ("step_top.json", "step_compiled.json"):
    try: d = json.load(open(os.environ["OUT"] + "/" + f))
    except Exception as e: print(f, e); continue
    for r in d.get("step", []):
        if not isinstance(r, dict) or "layer_gpu_s" not in r: print(str(r)[:1500]); continue
        m, p = r["layer_gpu_s"], r["pred_layer_s"]
        print(r["model"], " ".join(f"{k} {1e3*m[k]:.2f}/{1e3*p[k]:.2f}ms" for k in p), f"step {r['step_s']*1e3:.1f}/{r['pred_step_s']*1e3:.1f} opt {r['optimizer_s']*1e3:.2f}")
    for r in d.get("step", [])[-1:]:
        for name, kind, sec, n in r.get("top_kernels", [])[:40]: print(f"  {kind:11} {sec*1e3:7.3f} ms x{n:5.1f} {name[:110]}")
PY
