"""Fit cost.BLOCK_CAST_EFFICIENCY, the fraction of the memory rate block-scaled casts (MXFP8, NVFP4, MXFP4) move
their bytes at, on every block-scaled run in the calibration files, by least median |error| over a grid in [0.25, 1]
(the rule declared before the forty-sixth fresh holdout; benchmarks/RESULTS.md, "Block-scaled casts").

    .venv/bin/python benchmarks/block_cast_fit.py          # ~5 s
    .venv/bin/python benchmarks/block_cast_fit.py --only fresh_holdout_46.csv   # one file, at 1.0 and the default

Without --only it prints, per efficiency, the runs' median and max |error| and signed median, then per precision at
1.0 and at the best value. The figures are in sample: these runs chose the value.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

from flopwise.plan import cost
from flopwise.plan.spec import GEMM_FORMATS
from flopwise.plan.validate import validate_rows

CALIBRATION = Path(__file__).parent / "planner_calibration"
GRID = [i / 100 for i in range(25, 101)]


def block_scaled_rows(only: str | None = None) -> list[dict]:
    rows = []
    for path in sorted(CALIBRATION.glob("*.csv")):
        if only and path.name != only:
            continue
        with path.open(newline="") as f:
            rows += [r for r in csv.DictReader(f)
                     if r.get("precision") in GEMM_FORMATS and GEMM_FORMATS[r["precision"]].per_block_scales]
    return rows


def errors(rows: list[dict], efficiency: float) -> list[tuple[str, float]]:
    """(precision, signed error) of each costed row with the casts at `efficiency`."""
    saved = cost.BLOCK_CAST_EFFICIENCY
    cost.BLOCK_CAST_EFFICIENCY = efficiency
    try:
        return [(r["precision"], w["error"]) for r, w in zip(rows, validate_rows(rows), strict=True)
                if w.get("error") is not None]
    finally:
        cost.BLOCK_CAST_EFFICIENCY = saved


def summary(errs: list[float]) -> str:
    a = [abs(e) for e in errs]
    return (f"{len(errs):3d} runs  median {statistics.median(a):6.1%}  max {max(a):6.1%}  "
            f"signed {statistics.median(errs):+6.1%}") if errs else "  0 runs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="score one calibration file at 1.0 and at the default, no fit")
    args = parser.parse_args()
    rows = block_scaled_rows(args.only)
    grid = [1.0, cost.BLOCK_CAST_EFFICIENCY] if args.only else GRID
    scored = {eff: errors(rows, eff) for eff in grid}
    for eff in grid:
        print(f"{eff:.2f}  {summary([e for _, e in scored[eff]])}")
    best = min(grid, key=lambda eff: (statistics.median(abs(e) for _, e in scored[eff]), -eff))
    print(f"best {best:.2f} (least median |error|; the default is {cost.BLOCK_CAST_EFFICIENCY})")
    for eff in dict.fromkeys((1.0, best)):
        for precision in sorted({p for p, _ in scored[eff]}):
            print(f"  {eff:.2f} {precision:6s} {summary([e for p, e in scored[eff] if p == precision])}")


if __name__ == "__main__":
    main()
