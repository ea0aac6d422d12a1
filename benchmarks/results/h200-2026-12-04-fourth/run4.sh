#!/bin/bash
# Fourth H200 call (2026-12-04, fourth session): where flopwise's 1B step spends the time the planner does not see.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
timeout 140 python3 benchmarks/planner_kernels.py --sections step --presets llama-1b yuan-1b --micro-batch 4 \
  --repeats 5 --json $OUT/step_1b.json > $OUT/step_1b.log 2>&1
echo rc=$?; grep -v '^\[{' $OUT/step_1b.log | tail -5
