#!/bin/bash
# Third H200 call (2026-12-04, fourth session): flopwise's own trainer on a ~1B model, the planner's figure beside it.
# Needs the wheels run.sh names, carried in .whl/.
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src
for lfa in false true; do
  timeout 150 python3 -m flopwise.cli train --preset yuan-1b --steps 30 --log-every 10 --set model.lfa=$lfa \
    --set train.global_batch=16 --set train.micro_batch=4 --set train.eval_every=0 --set checkpoint.every=0 \
    --out /tmp/y_$lfa > $OUT/yuan1b_lfa_$lfa.log 2>&1
  echo "lfa=$lfa rc=$?"; cp /tmp/y_$lfa/metrics.jsonl $OUT/yuan1b_lfa_${lfa}_metrics.jsonl
  tail -8 $OUT/yuan1b_lfa_$lfa.log
done
