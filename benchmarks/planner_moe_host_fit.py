"""Fit the host time per MoE block (flopwise.plan.experts.MOE_BLOCK_HOST_S) on the costed MoE runs of sets 50 and 52:
the value in [0, 20 ms] (0.2 ms steps) with the least median |error|, the host time running ahead of the GPU (only
what a block's GPU time does not cover exposed); the figures with and without it, and the same under 5-fold
cross-validation grouped by source (each run predicted with a value fitted on the other folds), which is what
the track record keeps for these runs (planner_track_record.py).

    .venv/bin/python benchmarks/planner_moe_host_fit.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from planner_accuracy import group_folds, load_rows

from flopwise.plan import experts
from flopwise.plan.validate import validate_rows

MOE = Path(__file__).resolve().parent / "planner_calibration" / "moe"
FIT_FILES = ("fresh_holdout_50_moe.csv", "fresh_holdout_52_moe.csv")
GRID_S = [i / 5000 for i in range(101)]  # 0 to 20 ms
FOLDS = 5


def in_fit(row: dict) -> bool:
    """Whether a fit file's row was among those the constant was fitted on: not the latent-attention ones nor those
    with an expert TP other than tp, costed only from the twenty-seventh session on (out of sample for it, as any
    later set's)."""
    folded = bool(row.get("etp")) and bool(row.get("tp")) and int(row["etp"]) != int(row["tp"])
    return row.get("attention_variant") != "mla" and not folded


def fit_rows() -> list[dict]:
    """The fit files' rows the constant was fitted on, as planner_accuracy.load_rows reads them (each with its
    `file`)."""
    return [row for row in load_rows([MOE / name for name in FIT_FILES]) if in_fit(row)]


def error_table(rows: list[dict]) -> list[list[float | None]]:
    """Each row's error at each GRID_S value (None: refused): [grid][row]."""
    saved = experts.MOE_BLOCK_HOST_S
    table = []
    try:
        for host_s in GRID_S:
            experts.MOE_BLOCK_HOST_S = host_s
            table.append([out["predicted_s"] / float(row["measured_step_s"]) - 1.0 if out.get("predicted_s") else None
                          for row, out in zip(rows, validate_rows(rows), strict=True)])
    finally:
        experts.MOE_BLOCK_HOST_S = saved
    return table


def best(table: list[list[float | None]], members: list[int]) -> int:
    """The grid index with the least median |error| over the rows `members`."""
    def median(g: int) -> float:
        return statistics.median(abs(e) for i in members if (e := table[g][i]) is not None)
    return min(range(len(GRID_S)), key=median)


def cross_validated(rows: list[dict], table: list[list[float | None]]) -> tuple[list[float | None], list[float]]:
    """(each row's out-of-fold error, each fold's fitted value in seconds), folds grouped by source_id."""
    out: list[float | None] = [None] * len(rows)
    fitted = []
    for fold in group_folds(rows, FOLDS):
        held = set(fold)
        g = best(table, [i for i in range(len(rows)) if i not in held])
        fitted.append(GRID_S[g])
        for i in fold:
            out[i] = table[g][i]
    return out, fitted


def figures(errs: list[float | None]) -> str:
    e = [x for x in errs if x is not None]
    a = [abs(x) for x in e]
    return (f"{len(e)} runs, median {100 * statistics.median(a):.1f}% / max {100 * max(a):.1f}%, "
            f"signed {100 * statistics.median(e):+.1f}%")


def main() -> int:
    rows = fit_rows()
    table = error_table(rows)
    g = best(table, list(range(len(rows))))
    cv, fitted = cross_validated(rows, table)
    print(f"without: {figures(table[0])}")
    print(f"with {1e3 * GRID_S[g]:.1f} ms per MoE block and micro-batch, in sample: {figures(table[g])}")
    print(f"{FOLDS}-fold grouped CV (fold values {', '.join(f'{1e3 * s:.1f}' for s in fitted)} ms): {figures(cv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
