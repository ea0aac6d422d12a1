"""Score the mixture-of-experts sets (planner_calibration/moe/*.csv) with the planner as it is: per file, the costed
runs' median and max |error| and signed median, overall and per part, profile and model, and every refused row with
its reason. The same errors the track record's MoE groups keep (planner_track_record.py). The rows whose expert-parallel
group spans more than one node (ep x etp above the GPUs per node) are summed apart, and `--lines` holds each costed row
to its own MoE group's "90% within" in the committed record (the group-line test a blind set's declaration names, run
at the set's commit, whose record holds none of its rows; track_record.MOE_UNSEEN pools its counts).

    .venv/bin/python benchmarks/planner_moe_sets.py                      # every MoE set
    .venv/bin/python benchmarks/planner_moe_sets.py path/to/moe_runs.csv   # one file in the MoE columns
    .venv/bin/python benchmarks/planner_moe_sets.py --lines path/to/new_set.csv
"""

from __future__ import annotations

import argparse
import collections
import csv
import statistics
import sys
from pathlib import Path

from flopwise.plan import track_record
from flopwise.plan.experts import ep_nodes
from flopwise.plan.validate import row_inputs, validate_rows

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


def over_nodes(row: dict) -> bool:
    """Whether a row's expert-parallel group spans more than one node (experts.ep_nodes), as its cells state it:
    etp blank or 0 is tp, a blank tp (searched) counts as 1."""
    tp = int(row.get("tp") or 1)
    etp = int(row.get("etp") or 0) or tp
    return ep_nodes(int(row.get("ep") or 1), etp, int(row.get("gpus_per_node") or 8)) > 1


def group_lines(costed: list[tuple[dict, float]], record: dict) -> list[tuple[dict, float, str, float | None]]:
    """(row, error, group key, its "90% within") of each costed row against the line its plan quotes from `record`
    (track_record.quoted_group; none: key "", None)."""
    out = []
    for row, error in costed:
        _, cluster, training, *_ = row_inputs(row)
        found = track_record.quoted_group(cluster.accelerator.name, training.software, 0, record, moe=True)
        out.append((row, error, found[0], found[2]["p90"]) if found else (row, error, "", None))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="*", type=Path, help="MoE CSVs (default: planner_calibration/moe/*.csv)")
    ap.add_argument("--lines", action="store_true", help="each costed row against its MoE group's line in the record")
    args = ap.parse_args(argv)
    paths = args.csv or sorted(MOE.glob("*.csv"))
    for path in paths:
        costed, refused = score(path)
        print(f"{path.name}: {len(costed) + len(refused)} rows, {len(refused)} refused")
        if costed:
            print(f"  all: {summary([e for _, e in costed])}")
        apart = [e for row, e in costed if over_nodes(row)]
        if apart:
            print(f"  ep group over nodes: {summary(apart)}")
        for column in ("gpu", "software", "model"):
            groups = collections.defaultdict(list)
            for row, error in costed:
                groups[row[column]].append(error)
            for key in sorted(groups):
                print(f"  {column} {key}: {summary(groups[key])}")
        for reason, n in collections.Counter(reason for _, reason in refused).most_common():
            print(f"  refused ({n}): {reason}")
        if args.lines and costed:
            held = group_lines(costed, track_record.load())
            for row, error, key, p90 in held:
                verdict = "no group" if p90 is None else ("within" if abs(error) <= p90 else "outside")
                against = "" if p90 is None else f" against {key}'s {100 * p90:.1f}%"
                print(f"  line: {row.get('source_id', '')} {row['model']} {row['gpus']}: {100 * error:+.1f}%{against}, "
                      f"{verdict}")
            within = sum(p90 is not None and abs(e) <= p90 for _, e, _, p90 in held)
            print(f"  lines: {within} of {sum(p90 is not None for *_, p90 in held)} within their MoE group's line")
    return 0


if __name__ == "__main__":
    sys.exit(main())
