#!/bin/bash
# Third H200 call (2026-12-04, fifth session): flopwise's trainer on yuan-1b, eager and with train.compile = true,
# the planner's figure (now with flopwise's measured kernel profile) beside each. Needs the wheels in .whl/ (run.sh
# of h200-2026-12-04-fourth).
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src
for compile in false true; do
  t0=$(date +%s)
  timeout 200 python3 -m flopwise.cli train --preset yuan-1b --steps 30 --log-every 10 --set train.compile=$compile \
    --set train.global_batch=16 --set train.micro_batch=4 --set train.eval_every=0 --set checkpoint.every=0 \
    --out /tmp/y_$compile > $OUT/yuan1b_compile_$compile.log 2>&1
  echo "compile=$compile rc=$? $(( $(date +%s) - t0 )) s"; cp /tmp/y_$compile/metrics.jsonl $OUT/yuan1b_compile_${compile}_metrics.jsonl
  grep -A3 "step time" $OUT/yuan1b_compile_$compile.log | head -6
done
