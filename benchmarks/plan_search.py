"""Benchmark: the planner's full layout search for yuan2-102b over 1024 A100-80GB GPUs (global batch 1152),
and the validation table against the published runs.

    PYTHONPATH=src python benchmarks/plan_search.py [--repeat 3] [--published ../shared/published]

Prints the search time (best and median of the repeats; each repeat builds a fresh cost model, so nothing
is cached between them), the layouts evaluated, the best plan, and a markdown table of validation errors.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from flopwise.hardware import get_accelerator
from flopwise.models.config import get_preset
from flopwise.plan.search import search
from flopwise.plan.spec import Cluster, Training
from flopwise.plan.validate import validate_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "published"
    parser.add_argument("--published", type=Path, default=default)
    args = parser.parse_args()

    model = get_preset("yuan2-102b")
    cluster = Cluster(get_accelerator("A100-80GB"), 1024)
    training = Training(1152, tokens=1e12)
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        result = search(model, cluster, training, top=5)
        times.append(time.perf_counter() - start)
    best = result.plans[0]
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}"
    )
    print(
        f"search yuan2-102b / 1024 x A100-80GB / global batch 1152: best {min(times):.2f} s, "
        f"median {statistics.median(times):.2f} s over {args.repeat} runs; "
        f"{result.evaluated} layouts evaluated, {result.feasible} fit"
    )
    print(
        f"best: {best.layout.short()} split {list(best.pp_layers)}: {best.step_time:.2f} s/step, "
        f"MFU {100 * best.mfu:.1f}%, peak {best.peak_memory / 1e9:.1f} GB"
    )
    print("breakdown: " + ", ".join(f"{k} {v:.1f}%" for k, v in best.breakdown_percent.items()))

    files = sorted(args.published.glob("*.csv"))
    if not files:
        print(f"no published CSVs at {args.published}", file=sys.stderr)
        return
    report = validate_files(files)
    print("\n| file | model | layout | predicted s | measured s | error |")
    print("|---|---|---|---|---|---|")
    for r in report["rows"]:
        print(
            f"| {r['file']} | {r['model']} | {r['layout']} | {r['predicted_s']:.3f} | "
            f"{r['measured_s']:.3f} | {100 * r['error']:+.1f}% |"
        )
    for name, s in {**report["files"], "all": report["summary"]}.items():
        print(
            f"{name}: {s['predicted']} rows, median |error| {100 * s['median_abs_error']:.1f}%, "
            f"max |error| {100 * s['max_abs_error']:.1f}%"
        )


if __name__ == "__main__":
    main()
