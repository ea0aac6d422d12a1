"""Write the planner's track record (src/flopwise/plan/track_record.json): its out-of-sample error on published runs.

    .venv/bin/python benchmarks/planner_track_record.py           # rewrite the JSON (~40 s)
    .venv/bin/python benchmarks/planner_track_record.py --check   # exit 1 if it no longer matches the planner
    .venv/bin/python benchmarks/planner_track_record.py --blocks  # errors by each block's planned forward time

Every error is out of sample: the fit rows (planner_calibration/fit.csv) are predicted out of fold under the same
5-fold grouped cross-validation `planner_fit.py` reports, and every other calibration file (holdout.csv and the
fresh holdouts) with the constants fitted on fit.csv alone, which are the planner's defaults. `../shared/published`
is left out: the planner was built on those two papers. Errors are grouped by GPU, software profile and model size
(flopwise.plan.track_record.group_keys; the mixture-of-experts runs of planner_calibration/moe/ by GPU and profile in
groups of their own, outside `all` and every other group), and the runs of each profile with few micro-batches per step
(track_record.few_microbatches: no pipeline, calibrated GPUs only), and the runs whose blocks run under a
millisecond forward (track_record.small_block); each group keeps n, the median, 90th percentile
and maximum |error|, the median signed error, and how many runs were slower than predicted. Runs whose source printed
their peak memory per GPU (the `measured_memory_gib` column) also give the planned peak's error, overall and per
profile (`memory`; `too_fast` there counts runs that printed more than was planned). `flopwise plan` prints
the closest group's line with every plan, and the few-micro-batch line with a plan whose step has that few.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import planner_moe_host_fit as moe_host_fit
from planner_accuracy import CALIBRATION, cross_validate, load_rows
from planner_fit import attach, fit_constants, predict

from flopwise.flops import param_counts
from flopwise.plan import experts, track_record
from flopwise.plan.cost import DEFAULT_CONSTANTS, CostModel
from flopwise.plan.memory import memory_error
from flopwise.plan.validate import measured_memory

OUT = Path(__file__).resolve().parent.parent / "src" / "flopwise" / "plan" / "track_record.json"
FOLDS = 5


def out_of_sample_errors() -> tuple[list[dict], dict[str, int]]:
    """(rows with their out-of-sample `error`, rows per file)."""
    files = sorted(CALIBRATION.glob("*.csv"))
    fit_rows = attach(load_rows([CALIBRATION / "fit.csv"]))
    cv = cross_validate(fit_rows, fit_constants, predict, k=FOLDS)
    scored = []
    for row, pred in zip(fit_rows, cv["predictions"], strict=True):
        if pred is not None:
            scored.append({**row, "error": pred / float(row["measured_step_s"]) - 1.0})
    defaults = dataclasses.asdict(DEFAULT_CONSTANTS)
    counts = {"fit.csv": len(fit_rows)}
    # the MoE runs the host time per MoE block was fitted on: out of fold, as the fit rows above
    moe_rows = moe_host_fit.fit_rows()
    moe_cv, _ = moe_host_fit.cross_validated(moe_rows, moe_host_fit.error_table(moe_rows))
    for path in files + sorted(CALIBRATION.glob("moe/*.csv")):
        if path.name == "fit.csv":
            continue
        name = str(path.relative_to(CALIBRATION))
        if path.name in moe_host_fit.FIT_FILES:
            kept = [(row, e) for row, e in zip(moe_rows, moe_cv, strict=True) if row["file"] == path.name and e is not None]
            rows = attach([row for row, _ in kept])  # (every kept row is costed: none dropped)
            scored += [{**row, "error": e} for row, (_, e) in zip(rows, kept, strict=True)]
            # the rows costed after the fit (latent attention): the shipped constant never saw them
            later = attach([row for row in load_rows([path]) if not moe_host_fit.in_fit(row)])
            scored += [{**row, "error": predict(row, defaults) / float(row["measured_step_s"]) - 1.0} for row in later]
            rows += later
        else:
            rows = attach(load_rows([path]))
            scored += [{**row, "error": predict(row, defaults) / float(row["measured_step_s"]) - 1.0} for row in rows]
        counts[name] = len(rows)
    return scored, counts


def summarise(errors: list[float]) -> dict:
    a = np.abs(np.array(errors))
    return {"n": len(errors), "median": round(float(np.median(a)), 4), "p90": round(float(np.percentile(a, 90)), 4),
            "max": round(float(a.max()), 4), "too_fast": sum(1 for e in errors if e < 0),
            "signed_median": round(float(np.median(errors)), 4)}


def build() -> dict:
    scored, counts = out_of_sample_errors()
    groups: dict[str, list[float]] = {}
    memory: dict[str, list[float]] = {}
    for row in scored:
        obs = row["_obs"]
        params = param_counts(obs.model).total
        if obs.model.is_moe:  # groups of their own, outside every dense line (track_record.MOE_KEY)
            for key, _ in track_record.group_keys(obs.cluster.accelerator.name, obs.training.software, params, moe=True):
                groups.setdefault(key, []).append(row["error"])
            if experts.ep_nodes(obs.layout.ep, obs.layout.expert_tp, obs.cluster.gpus_per_node) > 1:
                groups.setdefault(track_record.EP_OVER_NODES_KEY, []).append(row["error"])
            continue
        printed = measured_memory(row)
        if printed is not None:  # the planned peak (no fitted constant moves it) against the printed one
            error = memory_error(CostModel(obs.model, obs.cluster, obs.training).evaluate(obs.layout).peak_memory,
                                 *printed)
            for key in (track_record.MEMORY_KEY, track_record.memory_key(obs.training.software)):
                memory.setdefault(key, []).append(error)
        for key, _ in track_record.group_keys(obs.cluster.accelerator.name, obs.training.software, params):
            groups.setdefault(key, []).append(row["error"])
        if obs.training.gemm_format:
            groups.setdefault(track_record.precision_key(obs.training.precision), []).append(row["error"])
        cm = CostModel(obs.model, obs.cluster, obs.training)
        m = cm.microbatches(obs.layout)
        if track_record.few_microbatches(obs.cluster.accelerator.name, m, obs.layout.pp):
            groups.setdefault(track_record.microbatch_key(obs.training.software), []).append(row["error"])
        if track_record.small_block(obs.cluster.accelerator, cm.block_forward_time(obs.layout)):
            groups.setdefault(track_record.SMALL_BLOCK_KEY, []).append(row["error"])
    return {
        "what": "the planner's out-of-sample |error| on published runs (benchmarks/planner_track_record.py)",
        "constants": dataclasses.asdict(DEFAULT_CONSTANTS),
        "rows": counts,
        "all": summarise([r["error"] for r in scored if not r["_obs"].model.is_moe]),
        "groups": {k: summarise(v) for k, v in sorted(groups.items())},
        "memory": {k: summarise(v) for k, v in sorted(memory.items())},
    }


BLOCK_BINS_MS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, float("inf"))


def block_bins() -> list[dict]:
    """The out-of-sample errors binned by the planned forward time of one block for one micro-batch (FINDINGS.md
    section 31: below about a millisecond the host's kernel launches can set the pace)."""
    scored, _ = out_of_sample_errors()
    timed = []
    for row in scored:
        obs = row["_obs"]
        if obs.model.is_moe:  # dense blocks only, as every line but the MoE ones
            continue
        timed.append((CostModel(obs.model, obs.cluster, obs.training).block_forward_time(obs.layout) * 1e3,
                      row["error"]))
    return [{"from_ms": lo, "to_ms": hi, **summarise(errors)}
            for lo, hi in zip(BLOCK_BINS_MS, BLOCK_BINS_MS[1:], strict=False)
            if (errors := [e for ms, e in timed if lo <= ms < hi])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the JSON differs from a fresh computation")
    ap.add_argument("--blocks", action="store_true",
                    help="print the errors binned by each block's planned forward time (writes nothing)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if args.blocks:
        print("| planned forward of one block, one micro-batch | runs | median |error| | worst | median signed |")
        for b in block_bins():
            print(f"| {b['from_ms']:g}-{b['to_ms']:g} ms | {b['n']} | {100 * b['median']:.1f}% | {100 * b['max']:.1f}% "
                  f"| {100 * b['signed_median']:+.1f}% |")
        return 0
    record = build()
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    if args.check:
        same = args.out.exists() and json.loads(args.out.read_text()) == json.loads(text)
        print(f"{args.out}: {'current' if same else 'STALE: rerun benchmarks/planner_track_record.py'}")
        return 0 if same else 1
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)  # never a half-written record
    s = record["all"]
    print(f"wrote {args.out}: {s['n']} runs, median {100 * s['median']:.1f}%, 90% within {100 * s['p90']:.1f}%, "
          f"worst {100 * s['max']:.1f}%; {len(record['groups'])} groups")
    return 0


if __name__ == "__main__":
    sys.exit(main())
