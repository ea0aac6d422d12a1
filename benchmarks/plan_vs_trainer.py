"""The planner's prediction against the trainer's measurement, per layout, before and after calibration.

Every layout below is trained for a few steps on CPU (gloo for several ranks, one intra-op thread per rank);
each run ends with its `plan_vs_measured` record (metrics.jsonl). The device constants are then fitted
(flopwise.plan.calibrate) on the FIT layouts only, and the error is reported on the others.

    python benchmarks/plan_vs_trainer.py [--steps 8] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE = ["model.layers=4", "model.hidden=256", "model.heads=8", "model.kv_heads=4", "model.ffn=768",
         "model.vocab_size=2048", "model.seq_len=128", "model.lfa=false", "train.global_batch=8",
         "train.eval_every=0", "checkpoint.every=0", "train.log_every=100", "guard.enabled=false"]
LAYOUTS = {  # name: (ranks, overrides, fitted?)
    "single mb8": (1, ["train.micro_batch=8"], True),
    "single mb2": (1, ["train.micro_batch=2"], True),
    "dp2 mb4": (2, ["parallel.dp=2", "train.micro_batch=4"], True),
    # one sequence per rank: the gradient all-reduce is most of the step, so the link is fitted where it shows
    # (with dp2 mb4 alone, an all-reduce hidden in one run's noise let the link fit 20x high)
    "dp2 batch2 mb1": (2, ["parallel.dp=2", "train.global_batch=2", "train.micro_batch=1"], True),
    "single mb4 recompute full": (1, ["train.micro_batch=4", 'parallel.recompute="full"'], False),
    "single mb8 recompute selective": (1, ["train.micro_batch=8", 'parallel.recompute="selective"'], False),
    "dp2 zero1 mb2": (2, ["parallel.dp=2", "parallel.zero=1", "train.micro_batch=2"], False),
    "tp2 sp mb4": (2, ["parallel.tp=2", "train.micro_batch=4"], False),
    "pp2 1f1b mb2": (2, ["parallel.pp=2", "train.micro_batch=2"], False),
}


def _job(shards, overrides, out, steps):
    from flopwise.train.config import load_config

    return load_config(None, [f'data.shards="{shards}"', *SHAPE, *overrides], preset="tiny", out=out,
                       **{"train.steps": steps})


def _worker(rank, world, port, shards, overrides, out, steps):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from flopwise.train.trainer import train

    train(_job(shards, overrides, out, steps))


def run_layout(shards, world, overrides, out, steps):
    if world == 1:
        from flopwise.train.trainer import train

        train(_job(shards, overrides, out, steps))
    else:
        from parallel.harness import free_port  # tests/parallel/harness.py

        mp.start_processes(_worker, args=(world, free_port(), str(shards), overrides, out, steps), nprocs=world,
                           join=True, start_method="spawn")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_shards

    from flopwise.plan.calibrate import calibrate_runs

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="flopwise-plan-vs-trainer-"))
    shards = make_shards(work / "shards", vocab_size=2048, docs=300)
    dirs, records = {}, {}
    for name, (world, overrides, _) in LAYOUTS.items():
        dirs[name] = out = work / name.replace(" ", "-")
        start = time.time()
        run_layout(shards, world, overrides, str(out), args.steps)
        records[name] = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
        print(f"{name}: {time.time() - start:.0f} s", file=sys.stderr)
    # the same fit as `flopwise plan calibrate` (every run set on the fitted runs' median CPU measurement)
    fit_names = [n for n, (_, _, f) in LAYOUTS.items() if f]
    held_names = [n for n in LAYOUTS if n not in fit_names]
    report = calibrate_runs([dirs[n] for n in fit_names], [dirs[n] for n in held_names])
    rows = []
    for name, row in zip(fit_names + held_names, report.rows, strict=True):
        rec = records[name]
        rows.append({
            "layout": name, "role": "fit" if row["role"] == "fit" else "held out", "measured_s": row["measured_s"],
            "predicted_before_s": row["predicted_before_s"], "predicted_after_s": row["predicted_after_s"],
            "error_before": row["error_before"], "error_after": row["error_after"],
            "predicted_memory_mb": rec["predicted_memory_bytes"] / 1e6,
            "measured_memory_mb": rec["measured_memory_bytes"] / 1e6, "memory_error": rec["memory_error"],
        })
    rows.sort(key=lambda r: list(LAYOUTS).index(r["layout"]))
    meta = {"device": f"CPU ({platform.machine()}, {os.cpu_count()} cores), gloo, 1 thread per rank",
            "peak_flops_per_rank": report.accelerator.peak_flops, "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"), "steps": args.steps,
            "fitted": report.constants, "warnings": report.warnings,
            "clock": records[next(iter(records))]["step_clock"]}
    print(json.dumps(meta))
    print("\n| layout | role | measured s | predicted before | error | predicted after | error | memory planner / "
          "measured MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['role']} | {r['measured_s']:.3f} | {r['predicted_before_s']:.3f} | "
              f"{100 * r['error_before']:+.0f}% | {r['predicted_after_s']:.3f} | {100 * r['error_after']:+.1f}% | "
              f"{r['predicted_memory_mb']:.1f} / {r['measured_memory_mb']:.1f} ({100 * r['memory_error']:+.0f}%) |")
    held = [abs(r["error_after"]) for r in rows if r["role"] == "held out"]
    print(f"\nheld-out |error| after calibration: median {100 * sorted(held)[len(held) // 2]:.1f}%, "
          f"max {100 * max(held):.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
