"""Planner accuracy on published training runs, beside constant-efficiency baselines, with grouped CV.

    .venv/bin/python benchmarks/planner_accuracy.py                       # calibration fit + holdout CSVs
    .venv/bin/python benchmarks/planner_accuracy.py ../shared/published/*.csv --no-rows
    .venv/bin/python benchmarks/planner_accuracy.py --markdown --json /tmp/accuracy.json

For every row of the CSV(s) (format: shared/published/README.md, plus the calibration columns source_id,
stack, software, citation, notes; see benchmarks/planner_calibration/README.md) it reports
- the planner's prediction through the code `flopwise plan validate` runs (flopwise.plan.validate.validate_rows),
  its error (predicted / measured - 1: positive = the planner is too slow, i.e. pessimistic), the layout the
  search settled on for blank cells, the time breakdown in seconds, or the reason it could not predict;
- `const50`: step = model FLOPs / (gpus x 0.5 x peak), model FLOPs from flopwise.flops (6 x matmul weights +
  full-sequence attention, PaLM), peak = the catalogue's dense bf16 peak (also for fp8 rows);
- `const_fit`: the same with the one efficiency that minimises the median |error| on the fit rows (files whose
  name contains 'fit', or a `split` column), applied to every row, so its holdout figures are out-of-sample;
and summarises median and max |error| overall and per group (split, GPU, stack, scale, source, and the classes
issue 14 names). `cross_validate(rows, fit, predict)` is the grouped k-fold driver for fitted models: folds
are whole sources, so every fold is scored on runs its fit never saw.

Needs no network and no GPU. Sign convention and group definitions are the ones FINDINGS.md uses.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from flopwise.errors import ConfigError, DataError, FlopwiseError, PlanError
from flopwise.flops import model_flops_per_token
from flopwise.hardware import resolve_accelerator
from flopwise.plan.spec import LOW_PRECISIONS
from flopwise.plan.validate import PROVENANCE_COLUMNS, row_inputs, validate_rows

HERE = Path(__file__).resolve().parent
CALIBRATION = HERE / "planner_calibration"
DEFAULT_FILES = (CALIBRATION / "fit.csv", CALIBRATION / "holdout.csv")
BASELINE_EFFICIENCY = 0.5


# ---- rows ---------------------------------------------------------------------------------------------------
def load_rows(paths: Iterable[str | Path]) -> list[dict]:
    """CSV rows with `file` and `split` (fit | holdout | all) added; split from a `split` column, else the file name."""
    rows = []
    for path in map(Path, paths):
        with path.open(newline="") as fh:
            for index, row in enumerate(csv.DictReader(fh)):
                row = {k: (v or "").strip() for k, v in row.items() if k is not None}
                row["file"] = path.name
                row["index"] = index
                if not row.get("split"):
                    name = path.stem.lower()
                    row["split"] = "holdout" if "holdout" in name else "fit" if "fit" in name else "all"
                if not row.get("source_id"):
                    row["source_id"] = row.get("source") or path.stem
                rows.append(row)
    return rows


def _int(row: dict, key: str, default: int = 1) -> int:
    text = row.get(key, "")
    return int(float(text)) if text else default


def model_flops_per_step(row: dict) -> float:
    """Model FLOPs of one optimizer step (flopwise.flops convention: no recomputation)."""
    # row_inputs refuses cp > 1 and fp8, which do not change the model FLOPs; neutralise them to reuse its parsing
    model, *_ = row_inputs({**row, "cp": "", "precision": "bf16"})
    seq = _int(row, "seq")
    return model_flops_per_token(model, seq) * seq * _int(row, "global_batch")


def peak_flops(row: dict) -> float:
    return resolve_accelerator(row.get("gpu") or "A100-80GB").peak_flops


def implied_efficiency(row: dict) -> float:
    """Model FLOP/s achieved over the bf16 dense peak: the efficiency a constant model would need for this row."""
    return model_flops_per_step(row) / (_int(row, "gpus") * peak_flops(row) * float(row["measured_step_s"]))


def constant_predict(row: dict, efficiency: float) -> float:
    return model_flops_per_step(row) / (_int(row, "gpus") * efficiency * peak_flops(row))


def _implied_or_none(row: dict) -> float | None:
    try:
        return implied_efficiency(row)
    except (ConfigError, DataError):  # a shape the model config refuses: no baseline for this row
        return None


def fit_constant(rows: list[dict]) -> float:
    """The single efficiency minimising the median |error| over `rows` (grid of 0.0005 over 0.05-1.2)."""
    implied = [x for x in map(_implied_or_none, rows) if x is not None]
    if not implied:
        return BASELINE_EFFICIENCY
    best, best_err = BASELINE_EFFICIENCY, math.inf
    for step in range(100, 2401):
        e = step * 0.0005
        err = statistics.median(abs(x / e - 1.0) for x in implied)
        if err < best_err:
            best, best_err = e, err
    return best


# ---- groups -------------------------------------------------------------------------------------------------
SCALES = ((8, "1-8"), (64, "9-64"), (512, "65-512"), (2048, "513-2048"), (math.inf, "2049+"))


def scale_bucket(gpus: int) -> str:
    return next(name for top, name in SCALES if gpus <= top)


def classes(row: dict) -> list[str]:
    """The failing classes issue 14 names (a row can be in several)."""
    tp, pp, cp, gpus = _int(row, "tp"), _int(row, "pp"), _int(row, "cp"), _int(row, "gpus")
    zero = row.get("zero", "")
    rc = row.get("recompute", "")
    out = []
    if row.get("gpu", "").startswith("H1") or row.get("gpu") == "H200":
        out.append("Hopper (H100/H200)")
    if zero in ("2", "3") and tp == 1 and pp == 1 and cp == 1:
        out.append("pure FSDP/ZeRO-2/3, " + ("no recompute" if rc == "none" else "recompute" if rc else "recompute ?"))
    if zero == "3" and tp > 1:
        out.append("FSDP + TP")
    if row.get("stack") in ("megatron", "nemo", "deepspeed", "other") and gpus >= 512 and (tp > 1 or pp > 1):
        out.append("Megatron-style >= 512 GPUs")
    if pp >= 8:
        out.append("pipeline >= 8 stages" + (", full recompute" if rc == "full" else ""))
    if cp > 1:
        out.append("context parallel")
    if row.get("precision") in LOW_PRECISIONS:
        out.append(row["precision"])
    return out


def unmodelled(row: dict) -> list[str]:
    """Features of the row the planner refuses (context parallelism and FP8 are modelled since issue 14)."""
    out = []
    if _int(row, "pp") > 1 and row.get("zero") in ("2", "3"):
        out.append("ZeRO-2/3 with pipeline parallelism")
    return out


def group_keys(row: dict) -> list[tuple[str, str]]:
    return (
        [("all", "all"), ("split", row["split"]), ("gpu", row.get("gpu", "")), ("stack", row.get("stack") or "?")]
        + [("scale", scale_bucket(_int(row, "gpus"))), ("source", row["source_id"])]
        + [("class", c) for c in classes(row)]
    )


# ---- evaluation ---------------------------------------------------------------------------------------------
def evaluate(rows: list[dict], efficiency_fit: float | None = None, published_format: bool = False) -> dict:
    """Planner, const50 and const_fit predictions for every row, and the summaries per group (published_format:
    the planner does not see the provenance columns, so it infers each row's software profile)."""
    fit_rows = [r for r in rows if r["split"] == "fit"]
    if efficiency_fit is None:
        efficiency_fit = fit_constant(fit_rows) if fit_rows else BASELINE_EFFICIENCY
    seen = [{k: v for k, v in r.items() if k not in PROVENANCE_COLUMNS} for r in rows] if published_format else rows
    planner = validate_rows(seen, "")
    results = []
    for row, p in zip(rows, planner, strict=True):
        measured = float(row["measured_step_s"])
        out = {
            "file": row["file"],
            "split": row["split"],
            "source_id": row["source_id"],
            "model": row.get("model", ""),
            "gpu": row.get("gpu", ""),
            "gpus": _int(row, "gpus"),
            "stack": row.get("stack", ""),
            "precision": row.get("precision", ""),
            "classes": classes(row),
            "unmodelled": unmodelled(row),
            "measured_s": measured,
            "implied_efficiency": _implied_or_none(row),
        }
        for name, e in (("const50", BASELINE_EFFICIENCY), ("const_fit", efficiency_fit)):
            implied = out["implied_efficiency"]
            # constant model: step = F / (gpus e peak) = measured x implied / e
            out[f"{name}_s"] = None if implied is None else measured * implied / e
            out[f"{name}_error"] = None if implied is None else implied / e - 1.0
        if "error" in p:
            out.update(
                planner_s=p["predicted_s"],
                planner_error=p["error"],
                layout=p["layout"],
                mfu=p["mfu"],
                peak_memory_gb=p["peak_memory_gb"],
                breakdown_s={k: v / 100.0 * p["predicted_s"] for k, v in p["breakdown_percent"].items()},
                planner_notes=p["notes"],
            )
        else:
            out["reason"] = p["error_message"]
        results.append(out)
    return {"efficiency_fit": efficiency_fit, "rows": results, "groups": summarise(results, rows)}


def _stats(errors: list[float | None]) -> dict:
    errors = [e for e in errors if e is not None]
    if not errors:
        return {"n": 0, "median": None, "max": None}
    errs = [abs(e) for e in errors]
    return {"n": len(errs), "median": statistics.median(errs), "max": max(errs)}


def summarise(results: list[dict], rows: list[dict]) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for res, row in zip(results, rows, strict=True):
        for key in group_keys(row):
            groups.setdefault(key, []).append(res)
    out = []
    for (kind, name), members in groups.items():
        predicted = [m for m in members if "planner_error" in m]
        out.append(
            {
                "kind": kind,
                "group": name,
                "rows": len(members),
                "planner": _stats([m["planner_error"] for m in predicted]),
                "planner_signed_median": statistics.median(m["planner_error"] for m in predicted) if predicted else None,
                "const50": _stats([m["const50_error"] for m in members]),
                "const50_same_rows": _stats([m["const50_error"] for m in predicted]),
                "const_fit": _stats([m["const_fit_error"] for m in members]),
                "const_fit_same_rows": _stats([m["const_fit_error"] for m in predicted]),
                "reasons": sorted({m["reason"] for m in members if "reason" in m}),
            }
        )
    order = {"all": 0, "split": 1, "gpu": 2, "stack": 3, "scale": 4, "class": 5, "source": 6}
    scales = [name for _, name in SCALES]

    def key(g: dict) -> tuple:
        within = scales.index(g["group"]) if g["kind"] == "scale" else 0
        return order.get(g["kind"], 9), within, g["group"]

    return sorted(out, key=key)


# ---- cross-validation ---------------------------------------------------------------------------------------
def group_folds(rows: list[dict], k: int | None, key: str = "source_id") -> list[list[int]]:
    """Row indices per fold; whole groups stay together. k=None: one fold per group (leave-one-source-out).
    Otherwise groups are dealt largest first onto the fold with the fewest rows (deterministic)."""
    by_group: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_group.setdefault(row.get(key) or "?", []).append(i)
    names = sorted(by_group, key=lambda g: (-len(by_group[g]), g))
    if k is None or k >= len(names):
        return [by_group[g] for g in names]
    folds: list[list[int]] = [[] for _ in range(k)]
    for g in names:
        min(folds, key=len).extend(by_group[g])
    return folds


def cross_validate(
    rows: list[dict],
    fit: Callable[[list[dict]], object],
    predict: Callable[[dict, object], float | None],
    k: int | None = 5,
    key: str = "source_id",
) -> dict:
    """Grouped k-fold CV: for each fold, params = fit(other folds' rows), then predict(row, params) on the fold.

    `predict` may return None (or raise FlopwiseError) for a row it cannot predict; such rows are counted, not
    scored. Returns per-row out-of-fold predictions and the |error| median/max overall and per fold."""
    folds = group_folds(rows, k, key)
    preds: dict[int, float | None] = {}
    per_fold = []
    for fold in folds:
        held = set(fold)
        params = fit([r for i, r in enumerate(rows) if i not in held])
        errors = []
        for i in fold:
            try:
                pred = predict(rows[i], params)
            except (PlanError, ConfigError, DataError):
                pred = None
            preds[i] = pred
            if pred is not None:
                errors.append(pred / float(rows[i]["measured_step_s"]) - 1.0)
        per_fold.append({"groups": sorted({rows[i].get(key, "?") for i in fold}), "params": params, **_stats(errors)})
    errors = [preds[i] / float(r["measured_step_s"]) - 1.0 for i, r in enumerate(rows) if preds.get(i) is not None]
    return {
        "k": len(folds),
        "summary": _stats(errors),
        "unpredicted": sum(1 for i in range(len(rows)) if preds.get(i) is None),
        "folds": per_fold,
        "predictions": [preds.get(i) for i in range(len(rows))],
    }


def fit_and_score(
    rows: list[dict], fit: Callable[[list[dict]], object], predict: Callable[[dict, object], float | None]
) -> dict:
    """Fit on the rows whose split is 'fit', score on the 'holdout' rows: the out-of-sample figure to report."""
    train = [r for r in rows if r["split"] == "fit"]
    test = [r for r in rows if r["split"] == "holdout"]
    params = fit(train)
    errors, unpredicted = [], 0
    for row in test:
        try:
            pred = predict(row, params)
        except (PlanError, ConfigError, DataError):
            pred = None
        if pred is None:
            unpredicted += 1
        else:
            errors.append(pred / float(row["measured_step_s"]) - 1.0)
    return {"params": params, "holdout": _stats(errors), "unpredicted": unpredicted, "fit_rows": len(train)}


# ---- printing -----------------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _spct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def print_rows(results: list[dict]) -> None:
    print(
        f"{'split':7} {'source':28} {'model':16} {'gpu':9} {'gpus':>5} {'prec':4} {'meas s':>8} {'planner':>8} "
        f"{'const50':>8} {'fit':>8}  layout / reason"
    )
    for r in results:
        planner = _spct(r.get("planner_error"))
        tail = r.get("layout") or f"[{r.get('reason')}]"
        if r.get("planner_notes"):
            tail += f" ({'; '.join(r['planner_notes'])})"
        print(
            f"{r['split']:7} {r['source_id'][:28]:28} {r['model'][:16]:16} {r['gpu']:9} {r['gpus']:>5} "
            f"{r['precision'] or '-':4} {r['measured_s']:>8.3g} {planner:>8} {_spct(r['const50_error']):>8} "
            f"{_spct(r['const_fit_error']):>8}  {tail}"
        )


def group_table(groups: list[dict], markdown: bool, kinds: Iterable[str] | None = None) -> str:
    kinds = set(kinds) if kinds else None
    head = (
        "group",
        "rows",
        "planner n",
        "planner median",
        "planner max",
        "planner signed median",
        "const50 median",
        "const50 max",
        "const50 median (planner rows)",
        "fit median",
        "fit max",
    )
    lines = []
    if markdown:
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    else:
        lines.append(
            f"{'group':42} {'rows':>4} {'pl n':>4} {'pl med':>7} {'pl max':>7} {'pl sgn':>7} "
            f"{'c50 med':>7} {'c50 max':>7} {'c50 pl':>7} {'fit med':>7} {'fit max':>7}"
        )
    for g in groups:
        if kinds and g["kind"] not in kinds:
            continue
        cells = (
            f"{g['kind']}: {g['group']}",
            str(g["rows"]),
            str(g["planner"]["n"]),
            _pct(g["planner"]["median"]),
            _pct(g["planner"]["max"]),
            _spct(g["planner_signed_median"]),
            _pct(g["const50"]["median"]),
            _pct(g["const50"]["max"]),
            _pct(g["const50_same_rows"]["median"]),
            _pct(g["const_fit"]["median"]),
            _pct(g["const_fit"]["max"]),
        )
        if markdown:
            lines.append("| " + " | ".join(cells) + " |")
        else:
            lines.append(f"{cells[0][:42]:42} " + " ".join(f"{c:>{4 if i < 2 else 7}}" for i, c in enumerate(cells[1:])))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="CSV files (default: the calibration fit + holdout)")
    parser.add_argument("--no-rows", action="store_true", help="skip the per-row table")
    parser.add_argument("--markdown", action="store_true", help="print the group table as markdown")
    parser.add_argument("--kinds", default="", help="comma-separated group kinds to print (default: all)")
    parser.add_argument(
        "--cv",
        type=int,
        default=0,
        metavar="K",
        help="also cross-validate the constant-efficiency model with K grouped folds over the fit rows "
        "(0: leave-one-source-out)",
    )
    parser.add_argument("--json", type=Path, help="write rows, groups and CV results to this file")
    parser.add_argument(
        "--published-format",
        action="store_true",
        help="hide from the planner the columns the calibration set adds to the published format (source_id, "
        "stack, software, citation, notes): each row's profile is inferred from its source text or layout",
    )
    args = parser.parse_args(argv)

    files = args.files or list(DEFAULT_FILES)
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        rows = load_rows(files)
        for row in rows:
            text = row.get("measured_step_s", "")
            try:
                if float(text) > 0:
                    continue
            except ValueError:
                pass
            where = f"{row['file']} line {row['index'] + 2}"
            raise DataError(f"{where}: measured_step_s = {text!r}, must be a positive number")
        report = evaluate(rows, published_format=args.published_format)
    except (FlopwiseError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.no_rows:
        print_rows(report["rows"])
        print()
    n_fit = sum(r["split"] == "fit" for r in rows)
    how = f"median-|error| optimum on {n_fit} fit rows" if n_fit else "no rows marked fit: const_fit = const50"
    print(f"const_fit efficiency ({how}): {report['efficiency_fit']:.4f} of the dense bf16 peak")
    print(group_table(report["groups"], args.markdown, [k for k in args.kinds.split(",") if k]))
    reasons = sorted({r["reason"] for r in report["rows"] if "reason" in r})
    if reasons:
        print("\nrows the planner could not predict (its first reason):")
        for reason in reasons:
            print(f"  {sum(r.get('reason') == reason for r in report['rows']):3d} x {reason}")
        features = sorted({f for r in report["rows"] for f in r["unmodelled"]})
        print(
            "unmodelled features among all rows: "
            + ", ".join(f"{f} {sum(f in r['unmodelled'] for r in report['rows'])}" for f in features)
        )
    fit_rows = [r for r in rows if r["split"] == "fit"]
    if fit_rows:
        cv = cross_validate(fit_rows, fit_constant, constant_predict, k=args.cv or None)
        s = cv["summary"]
        print(
            f"\nconst_fit, grouped {cv['k']}-fold CV over the fit rows: median |error| {_pct(s['median'])}, "
            f"max {_pct(s['max'])} ({s['n']} rows)"
        )
        report["cv_const_fit"] = {k: v for k, v in cv.items() if k != "predictions"}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
