"""Fit the host time per MoE block (flopwise.plan.experts.MOE_BLOCK_HOST_S) on the costed MoE runs of sets 50 and 52:
the value in [0, 10 ms] (0.1 ms steps) with the least median |error|, and the figures with and without it.

    .venv/bin/python benchmarks/planner_moe_host_fit.py
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

from flopwise.plan import experts
from flopwise.plan.validate import validate_rows

MOE = Path(__file__).resolve().parent / "planner_calibration" / "moe"
FIT_FILES = ("fresh_holdout_50_moe.csv", "fresh_holdout_52_moe.csv")
GRID_S = [i * 1e-4 for i in range(101)]  # 0 to 10 ms


def errors(rows: list[dict], host_s: float) -> list[float]:
    """Each costed row's error with MOE_BLOCK_HOST_S = host_s (refused rows left out)."""
    saved = experts.MOE_BLOCK_HOST_S
    experts.MOE_BLOCK_HOST_S = host_s
    try:
        return [out["predicted_s"] / float(row["measured_step_s"]) - 1.0
                for row, out in zip(rows, validate_rows(rows), strict=True) if out.get("predicted_s")]
    finally:
        experts.MOE_BLOCK_HOST_S = saved


def figures(errs: list[float]) -> str:
    a = [abs(e) for e in errs]
    return (f"{len(errs)} runs, median {100 * statistics.median(a):.1f}% / max {100 * max(a):.1f}%, "
            f"signed {100 * statistics.median(errs):+.1f}%")


def main() -> int:
    rows = []
    for name in FIT_FILES:
        with (MOE / name).open(newline="") as fh:
            rows += list(csv.DictReader(fh))
    best = min(GRID_S, key=lambda s: statistics.median(abs(e) for e in errors(rows, s)))
    print(f"without: {figures(errors(rows, 0.0))}")
    print(f"with {1e3 * best:.1f} ms per MoE block and micro-batch: {figures(errors(rows, best))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
