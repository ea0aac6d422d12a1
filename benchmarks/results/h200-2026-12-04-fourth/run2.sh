#!/bin/bash
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
timeout 200 python3 benchmarks/planner_kernels.py --sections sustained_block --sustain-seconds 24 --block-models llama3-70b --block-tps 8,2 --json $OUT/sustained_70b.json > $OUT/sustained_70b.log 2>&1
timeout 200 python3 benchmarks/planner_kernels.py --sections sustained_block --sustain-seconds 24 --block-tps 4,2 --json $OUT/sustained_8b_tp24.json > $OUT/sustained_8b.log 2>&1
echo rc=$?; nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv
