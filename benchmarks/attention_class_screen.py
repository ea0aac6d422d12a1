"""Every calibration row costed with its profile's FlashAttention-2 on a Hopper-class part, as costed and with
`attention = fa3` stated: how far FA3's rate would move the PyTorch-native runs (benchmarks/RESULTS.md, "Attention
kernel classes").

    .venv/bin/python benchmarks/attention_class_screen.py   # ~2 s

Rows that state a kernel (an `attention` cell) are left out. The constants are the planner's defaults (fitted on
fit.csv), so the fit rows' errors are in sample here; the track record has them out of fold.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path

from flopwise.errors import FlopwiseError
from flopwise.plan.spec import attention_class
from flopwise.plan.validate import row_inputs, validate_rows

CALIBRATION = Path(__file__).parent / "planner_calibration"


def fa2_rows() -> list[tuple[str, dict]]:
    """(file, row) for each row costed with FlashAttention-2's class and stating no kernel."""
    out = []
    for path in sorted(CALIBRATION.glob("*.csv")):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if (row.get("attention") or "").strip():
                    continue
                try:
                    _, cluster, training, _, _ = row_inputs(row)
                except (FlopwiseError, ValueError):  # a row the planner refuses is in no share
                    continue
                if attention_class(training, cluster.accelerator) == "fa2":
                    out.append((path.name, row))
    return out


def summary(errors: list[float]) -> str:
    ab = sorted(abs(e) for e in errors)
    p90 = ab[round(0.9 * (len(ab) - 1))]
    return (f"{len(errors)} rows: median |error| {statistics.median(ab):.1%}, 90% within {p90:.1%}, worst {ab[-1]:.1%}, "
            f"signed median {statistics.median(errors):+.1%}")


def main() -> None:
    rows = fa2_rows()
    as_costed = validate_rows([r for _, r in rows])
    with_fa3 = validate_rows([{**r, "attention": "fa3"} for _, r in rows])
    pairs = [(name, a["error"], b["error"]) for (name, _), a, b in zip(rows, as_costed, with_fa3, strict=True)
             if a.get("error") is not None and b.get("error") is not None]
    print(f"as costed (FA2): {summary([p[1] for p in pairs])}")
    print(f"fa3 stated:      {summary([p[2] for p in pairs])}")
    by_file = defaultdict(list)
    for name, a, b in pairs:
        by_file[name].append((a, b))
    print("file: rows, signed median as costed -> with fa3")
    for name, errs in sorted(by_file.items()):
        print(f"  {name}: {len(errs)}, {statistics.median(e[0] for e in errs):+.1%} -> "
              f"{statistics.median(e[1] for e in errs):+.1%}")


if __name__ == "__main__":
    main()
