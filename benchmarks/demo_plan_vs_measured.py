"""The demo job's step time: what the planner says at start-up against what the run measures, over a few short runs.

`make demo` ends with the planner's step time beside the measured one (flopwise.train.forecast). On a CPU the
planner's device is measured at start-up (hardware.cpu_accelerator), so its figure moves from run to run with the
machine; this repeats short runs of the demo job and prints each run's pair, the peak and GEMM efficiency the
planner used (attention efficiency 0: the GPU default, before the CPU's own was measured), and the median error.

    .venv/bin/python benchmarks/demo_plan_vs_measured.py --runs 3 --steps 40
    PYTHONPATH=/path/to/other/src .venv/bin/python benchmarks/demo_plan_vs_measured.py   # another version's planner

The corpus is prepared once in the data cache (FLOPWISE_CACHE) as `make demo` does; eval and checkpoints are off.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from flopwise.plan.calibrate import plan_record

FLOPWISE = Path(sys.executable).with_name("flopwise")


def one_run(steps: int, out: Path) -> dict:
    cmd = [str(FLOPWISE), "train", "--out", str(out), "--steps", str(steps),
           "--set", "train.eval_every=0", "--set", "checkpoint.every=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        raise SystemExit(f"flopwise train failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return plan_record(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args(argv)
    if args.runs < 1 or args.steps < 2:
        ap.error("--runs must be at least 1 and --steps at least 2 (the first step is not timed)")
    errors = []
    print("| run | planner s | measured s | error | peak TFLOP/s | GEMM efficiency | attention efficiency |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            r = one_run(args.steps, Path(tmp) / f"run{i}")
            acc = r["inputs"]["accelerator"]
            if r["step_time_error"] is None:
                raise SystemExit(f"run {i + 1}: no step was timed")
            errors.append(r["step_time_error"])
            print(f"| {i + 1} | {r['predicted_step_s']:.3f} | {r['measured_step_s']:.3f} "
                  f"| {100 * r['step_time_error']:+.1f}% | {acc['peak_flops'] / 1e12:.3f} | {acc['gemm_efficiency']:.3f} "
                  f"| {acc.get('attention_efficiency', 0.0):.3f} |",
                  flush=True)
    print(f"median error {100 * statistics.median(errors):+.1f}% over {len(errors)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
