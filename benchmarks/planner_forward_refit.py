"""Would constants, or per-profile leans, learnt from every run gathered so far have predicted the next blind set better?

    .venv/bin/python benchmarks/planner_forward_refit.py                 # ~7 min on 2 cores
    .venv/bin/python benchmarks/planner_forward_refit.py --json /tmp/forward.json

Forward chaining over the calibration files in the order they were gathered: for each fresh holdout j (the file
without a number is the first), the five constants planner_fit.py fits (same names, bounds, robust loss and
layout resolution) are fitted on fit.csv, holdout.csv and fresh holdouts 1..j-1, and set j is predicted with
them. The same rows are predicted with the shipped constants (fitted on fit.csv alone). Every prediction of set j
uses only rows gathered before it, so the comparison is out of sample for the constants. It is not out of sample
for the model's structure, which was built while these sets were scored; both arms share that structure.

A third arm keeps the shipped constants and multiplies each plan by its software profile's lean over the runs
before the set (`profile_leans`, FINDINGS.md section 46).

Each arm's decision rule was declared before it first ran (FINDINGS.md sections 44 and 46). Run on 2026-12-06: the
refit fell 0.02 points short and the thirty-sixth blind set then rejected it (section 45); the lean fell 0.13 points
short. Neither is adopted.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
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


def errors(rows: list[dict], params: dict[str, float], leans: dict[str, float] | None = None) -> list[float]:
    """Each row's signed error with `params`, its plan scaled by its software profile's lean where `leans` is given."""
    return [predict(r, params) * (leans or {}).get(software(r), 1.0) / float(r["measured_step_s"]) - 1.0
            for r in rows]


def software(row: dict) -> str:
    return row["_obs"].training.software


SHRINK_RUNS = 20  # a profile's lean counts n / (n + 20) of its median: declared in FINDINGS.md section 46, not tuned


def profile_leans(pool: list[dict], params: dict[str, float], shrink: float = SHRINK_RUNS) -> dict[str, float]:
    """Per software profile, exp(median log(measured / planned) x n / (n + shrink)) over its n runs in `pool`."""
    logs: dict[str, list[float]] = {}
    for r in pool:
        logs.setdefault(software(r), []).append(math.log(float(r["measured_step_s"]) / predict(r, params)))
    return {p: math.exp(statistics.median(v) * len(v) / (len(v) + shrink)) for p, v in logs.items()}


ARMS = ("shipped", "forward", "lean")  # shipped constants; refitted on the runs before; shipped x profile lean


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the per-set figures and the fitted constants here")
    args = parser.parse_args(argv)

    shipped = {k: getattr(DEFAULT_CONSTANTS, k) for k in NAMES}
    pool = attach(load_rows([CALIBRATION / "fit.csv", CALIBRATION / "holdout.csv"]))
    sets = [(path, rows) for path in chain() if (rows := attach(load_rows([path])))]
    leans = forward(pool, sets, lambda before: profile_leans(before, shipped))
    report: dict = {"shipped": shipped, "sets": []}
    pooled: dict[str, list[float]] = {arm: [] for arm in ARMS}
    seen = len(pool)
    for (path, rows, params), (_, _, lean) in zip(forward(pool, sets, fit_constants), leans, strict=True):
        errs = {"shipped": errors(rows, shipped), "forward": errors(rows, params), "lean": errors(rows, shipped, lean)}
        entry = {"set": set_number(path), "file": path.name, "pool": seen, "params": params, "leans": lean,
                 **{arm: summarise(e) for arm, e in errs.items()}}
        for arm, e in errs.items():
            pooled[arm] += e
        report["sets"].append(entry)
        seen += len(rows)
        print(f"set {entry['set']:2} n={len(rows):3} pool={entry['pool']:3}  " + "  ".join(
            f"{arm} {100 * entry[arm]['median']:5.1f}% / {100 * entry[arm]['max']:5.1f}%" for arm in ARMS), flush=True)
    every = pool + [row for _, rows in sets for row in rows]
    final, final_leans = fit_constants(every), profile_leans(every, shipped)
    report["final"] = {"pool": len(every), "params": final, "leans": final_leans}
    report["pooled"] = {arm: summarise(e) for arm, e in pooled.items()}
    published = attach(load_rows(sorted(PUBLISHED.glob("*.csv")))) if PUBLISHED.exists() else []
    if published:
        report["published"] = {"shipped": summarise(errors(published, shipped)),
                               "forward": summarise(errors(published, final)),
                               "lean": summarise(errors(published, shipped, final_leans))}

    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    for arm in ARMS:
        s = report["pooled"][arm]
        better = sum(1 for e in report["sets"] if e[arm]["median"] < e["shipped"]["median"])
        worse = sum(1 for e in report["sets"] if e[arm]["median"] > e["shipped"]["median"])
        print(f"pooled {arm:8} n={s['n']} median {pct(s['median'])} p90 {pct(s['p90'])} max {pct(s['max'])} "
              f"signed median {pct(s['signed_median'])}" + (f"; sets better {better}, worse {worse}, of "
                                                            f"{len(report['sets'])}" if arm != "shipped" else ""))
    print(f"fitted on all {len(every)} rows: " + ", ".join(f"{k}={v:.4g}" for k, v in final.items()))
    print("profile leans from all rows: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(final_leans.items())))
    for arm, s in report.get("published", {}).items():
        print(f"../shared/published, {arm}: median {pct(s['median'])}, max {pct(s['max'])}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
