#!/bin/bash
# One H200 check (2026-12-04, fourth session): fused-AdamW resume on the GPU; the whole step re-timed with the fused
# optimizer; the 8B block's GEMMs held at the power cap (TP 8 / 1, bf16 / FP8); attention back to back.
# Carried beside it in .whl/ (git-ignored): wheels of the package needs the H200 image lacks (ftfy, wcwidth,
# datasketch, tomli-w), fetched with the device README's pip download line.
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.sm,temperature.gpu --format=csv | tee $OUT/smi.txt
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
t0=$(date +%s)
timeout 170 python3 -m pytest -q -p no:cacheprovider -x tests/train/test_trainer.py -k "fused or resume" 2>&1 | tee $OUT/pytest_gpu.log | tail -15
echo "pytest took $(( $(date +%s) - t0 )) s"
timeout 330 python3 benchmarks/planner_kernels.py --sections step,sustained_block,attention --sustain-seconds 50 \
    --json $OUT/kernels_fourth.json > $OUT/kernels_fourth.log 2>&1
echo "kernels rc=$? after $(( $(date +%s) - t0 )) s"
grep -v "^\[{" $OUT/kernels_fourth.log | tail -20
