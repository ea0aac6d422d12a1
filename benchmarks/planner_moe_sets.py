"""Score the mixture-of-experts sets (planner_calibration/moe/*.csv) with the planner as it is: per file, the costed
runs' median and max |error| and signed median, overall and per part, profile and model, and every refused row with
its reason. The same errors the track record's MoE groups keep (planner_track_record.py).

    .venv/bin/python benchmarks/planner_moe_sets.py                      # every MoE set
    .venv/bin/python benchmarks/planner_moe_sets.py path/to/moe_runs.csv   # one file in the MoE columns
"""

from __future__ import annotations

import argparse
import collections
import csv
import statistics
import sys
from pathlib import Path

from flopwise.plan.validate import validate_rows

MOE = Path(__file__).resolve().parent / "planner_calibration" / "moe"


def summary(errors: list[float]) -> str:
    a = [abs(e) for e in errors]
    return (f"{len(errors)} runs, median {100 * statistics.median(a):.1f}% / max {100 * max(a):.1f}%, signed "
            f"{100 * statistics.median(errors):+.1f}%, {sum(e < 0 for e in errors)} slower than planned")


def score(path: Path) -> tuple[list[tuple[dict, float]], list[tuple[dict, str]]]:
    """(costed rows with their error, refused rows with their reason) of one file."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    costed, refused = [], []
    for row, out in zip(rows, validate_rows(rows), strict=True):
        if out.get("predicted_s"):
            costed.append((row, out["predicted_s"] / float(row["measured_step_s"]) - 1.0))
        else:
            refused.append((row, out.get("error_message", "")))
    return costed, refused


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="*", type=Path, help="MoE CSVs (default: planner_calibration/moe/*.csv)")
    paths = ap.parse_args(argv).csv or sorted(MOE.glob("*.csv"))
    for path in paths:
        costed, refused = score(path)
        print(f"{path.name}: {len(costed) + len(refused)} rows, {len(refused)} refused")
        if costed:
            print(f"  all: {summary([e for _, e in costed])}")
        for column in ("gpu", "software", "model"):
            groups = collections.defaultdict(list)
            for row, error in costed:
                groups[row[column]].append(error)
            for key in sorted(groups):
                print(f"  {column} {key}: {summary(groups[key])}")
        for reason, n in collections.Counter(reason for _, reason in refused).most_common():
            print(f"  refused ({n}): {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
