"""Small micro-batches on a CPU: the planner's step time against the measured one, with and without the host time
per op (hardware.Accelerator.op_overhead_s x the ops flopwise's model dispatches, opcount.model_ops).

Each run trains a preset for a few steps at one micro-batch size (the global batch fixed) and ends with its
`plan_vs_measured` record; the planner's figure without the host term is the same record re-predicted with
op_overhead_s = 0.

    .venv/bin/python benchmarks/cpu_microbatches.py --preset nano --global-batch 8 --micro 1 2 4 8
    .venv/bin/python benchmarks/cpu_microbatches.py --preset tiny --global-batch 16 --micro 1 4 16 --steps 12
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from flopwise.plan.calibrate import plan_record, run_observation

FLOPWISE = Path(sys.executable).with_name("flopwise")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--micro", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    if args.steps < 2 or args.global_batch < 1 or any(m < 1 or args.global_batch % m for m in args.micro):
        ap.error("--steps must be at least 2, and each --micro must divide --global-batch")
    print(f"{args.preset}, global batch {args.global_batch}, {args.steps} steps per run\n")
    print("| micro-batch | measured s | planner s | error | without host time s | error | host us per op |")
    print("|---|---|---|---|---|---|---|")
    with_term, without = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for mb in args.micro:
            out = Path(tmp) / f"mb{mb}"
            cmd = [str(FLOPWISE), "train", "--preset", args.preset, "--out", str(out), "--steps", str(args.steps),
                   "--set", f"train.global_batch={args.global_batch}", "--set", f"train.micro_batch={mb}",
                   "--set", "train.eval_every=0", "--set", "checkpoint.every=0"]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if proc.returncode != 0:
                raise SystemExit(f"flopwise train failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
            record, obs = plan_record(out), run_observation(out)
            bare = obs.predict({"op_overhead_s": 0.0})
            measured = record["measured_step_s"]
            with_term.append(record["step_time_error"])
            without.append(bare / measured - 1)
            op_us = record["inputs"]["accelerator"].get("op_overhead_s", 0.0) * 1e6
            print(f"| {mb} | {measured:.4f} | {record['predicted_step_s']:.4f} | {100 * with_term[-1]:+.1f}% "
                  f"| {bare:.4f} | {100 * without[-1]:+.1f}% | {op_us:.2f} |", flush=True)
    print(f"\nmedian |error|: {100 * statistics.median(map(abs, with_term)):.1f}% with the host time per op, "
          f"{100 * statistics.median(map(abs, without)):.1f}% without")
    return 0


if __name__ == "__main__":
    sys.exit(main())
