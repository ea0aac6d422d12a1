"""Would fitting the cost model's constants on every run gathered so far have predicted the next blind set better?

    .venv/bin/python benchmarks/planner_forward_refit.py                 # ~6 min on 2 cores
    .venv/bin/python benchmarks/planner_forward_refit.py --json /tmp/forward.json

Forward chaining over the calibration files in the order they were gathered: for each fresh holdout j (the file
without a number is the first), the five constants planner_fit.py fits (same names, bounds, robust loss and
layout resolution) are fitted on fit.csv, holdout.csv and fresh holdouts 1..j-1, and set j is predicted with
them. The same rows are predicted with the shipped constants (fitted on fit.csv alone). Every prediction of set j
uses only rows gathered before it, so the comparison is out of sample for the constants. It is not out of sample
for the model's structure, which was built while these sets were scored; both arms share that structure.

The decision rule was declared before this script was first run (FINDINGS.md section 44); run once on 2026-12-06, it
fell 0.02 points short, and the thirty-sixth blind set then rejected the wider fit (section 45): not adopted.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from planner_accuracy import CALIBRATION, load_rows
from planner_fit import NAMES, PUBLISHED, attach, fit_constants, predict
from planner_track_record import summarise

from flopwise.plan.cost import DEFAULT_CONSTANTS


def set_number(path: Path) -> int:
    """fresh_holdout.csv is the first set; fresh_holdout_<n>.csv the n-th."""
    found = re.fullmatch(r"fresh_holdout(?:_(\d+))?\.csv", path.name)
    if not found:
        raise ValueError(f"{path.name} is not a fresh holdout file")
    return int(found.group(1) or 1)


def chain() -> list[Path]:
    """The fresh holdouts in the order they were gathered (set 10 after set 9, not after set 1)."""
    return sorted(CALIBRATION.glob("fresh_holdout*.csv"), key=set_number)


def forward(pool: list, sets: list[tuple[Path, list]], fit: Callable[[list], dict]) -> list[tuple[Path, list, dict]]:
    """(path, rows, constants) per set, the constants fitted on `pool` and every set before this one, never on it."""
    pool, out = list(pool), []
    for path, rows in sets:
        out.append((path, rows, fit(pool)))
        pool += rows
    return out


def errors(rows: list[dict], params: dict[str, float]) -> list[float]:
    return [predict(r, params) / float(r["measured_step_s"]) - 1.0 for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the per-set figures and the fitted constants here")
    args = parser.parse_args(argv)

    shipped = {k: getattr(DEFAULT_CONSTANTS, k) for k in NAMES}
    pool = attach(load_rows([CALIBRATION / "fit.csv", CALIBRATION / "holdout.csv"]))
    sets = [(path, rows) for path in chain() if (rows := attach(load_rows([path])))]
    report: dict = {"shipped": shipped, "sets": []}
    all_shipped, all_forward = [], []
    for path, rows, params in forward(pool, sets, fit_constants):
        e_ship, e_fwd = errors(rows, shipped), errors(rows, params)
        all_shipped += e_ship
        all_forward += e_fwd
        entry = {"set": set_number(path), "file": path.name, "pool": len(pool), "params": params,
                 "shipped": summarise(e_ship), "forward": summarise(e_fwd)}
        report["sets"].append(entry)
        print(f"set {entry['set']:2} n={len(rows):3} pool={len(pool):3}  shipped {100 * entry['shipped']['median']:5.1f}% "
              f"/ {100 * entry['shipped']['max']:5.1f}%  forward {100 * entry['forward']['median']:5.1f}% / "
              f"{100 * entry['forward']['max']:5.1f}%  " + " ".join(f"{k}={v:.3g}" for k, v in params.items()),
              flush=True)
    every = pool + [row for _, rows in sets for row in rows]
    final = fit_constants(every)
    report["final"] = {"pool": len(every), "params": final}
    report["pooled"] = {"shipped": summarise(all_shipped), "forward": summarise(all_forward)}
    wins = sum(1 for s in report["sets"] if s["forward"]["median"] < s["shipped"]["median"])
    losses = sum(1 for s in report["sets"] if s["forward"]["median"] > s["shipped"]["median"])
    report["sets_better"], report["sets_worse"] = wins, losses
    published = attach(load_rows(sorted(PUBLISHED.glob("*.csv")))) if PUBLISHED.exists() else []
    if published:
        report["published"] = {"shipped": summarise(errors(published, shipped)),
                               "final": summarise(errors(published, final))}

    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    for arm in ("shipped", "forward"):
        s = report["pooled"][arm]
        print(f"pooled {arm:8} n={s['n']} median {pct(s['median'])} p90 {pct(s['p90'])} max {pct(s['max'])} "
              f"signed median {pct(s['signed_median'])}")
    print(f"sets with a lower median forward: {wins}, higher: {losses}, of {len(report['sets'])}")
    print(f"fitted on all {len(every)} rows: " + ", ".join(f"{k}={v:.4g}" for k, v in final.items()))
    if published:
        for arm in ("shipped", "final"):
            s = report["published"][arm]
            print(f"../shared/published, {arm} constants: median {pct(s['median'])}, max {pct(s['max'])}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
