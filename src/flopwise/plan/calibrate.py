"""Fit the cost model's device constants to measured step times: the planner's closed loop.

An observation is one measured run: model, cluster, training, layout and the step time it took. The constants
are few and physical, fields of the accelerator (flopwise.hardware):
  gemm_efficiency    fraction of the dense peak that the run's matmuls sustain
  memory_efficiency  fraction of the memory bandwidth that streaming (elementwise) kernels reach
  link_bandwidth     intra-node bytes/s per device and direction (NVLink; on a mesh, all of a GPU's direct links
                     together, which its groups share: hardware.Accelerator.mesh_links; gloo over loopback on a CPU)
  attention_efficiency  fraction of the dense peak that fused causal attention, forward and backward, sustains
  op_overhead_s      host seconds per op eager PyTorch dispatches (flopwise's own eager model on a measured CPU; it
                     adds to every micro-batch)
(on a measured device the efficiencies are relative to start-up timings and may pass 1: `bounds`)
and the cost model's own constants (flopwise.plan.cost.Constants, issue 14), fitted to published runs of many
stacks: eager_traffic, network_efficiency, straggler_cv, pipeline_instruction_s, fa2_hopper_efficiency,
backward_efficiency.
The fit minimises the squared log error log(predicted / measured) summed over the observations, by damped
Gauss-Newton (Levenberg-Marquardt) on the logarithms of the constants, within their bounds: each constant
divides (a rate) or multiplies (a time, TIME_CONSTANTS) one part of the step time, so the error is smooth and nearly
linear in those logarithms.

`fit` takes any observations, the trainer's own runs (`runs_observations` reads their metrics.jsonl) or
published ones, and the names of the constants to fit.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flopwise.config_values import positive
from flopwise.errors import ConfigError, DataError, FlopwiseError
from flopwise.hardware import CATALOGUE, EFFICIENCIES, Accelerator, efficiency_ceiling, merge_measured
from flopwise.layout import Layout
from flopwise.models.config import ModelConfig
from flopwise.plan.cost import DEFAULT_CONSTANTS, Constants, CostModel
from flopwise.plan.spec import Cluster, Training
from flopwise.userfiles import read_bytes

# name -> (lower bound, upper bound)
CONSTANTS = {
    "gemm_efficiency": (0.01, 1.0),
    "memory_efficiency": (0.01, 1.0),
    "link_bandwidth": (1e6, 1e13),
    "attention_efficiency": (0.01, 1.0),
    "op_overhead_s": (1e-7, 1e-3),  # 0.1 us (a GPU's launch) to 1 ms (a very busy Python host)
    # cost-model constants (fields of flopwise.plan.cost.Constants); positive bounds: the fit is in logarithms
    "eager_traffic": (1.0, 8.0),
    "network_efficiency": (0.1, 1.0),
    "straggler_cv": (1e-4, 0.2),
    "pipeline_instruction_s": (1e-5, 1.0),
    "fa2_hopper_efficiency": (0.1, 0.8),
    "backward_efficiency": (0.5, 1.0),
}
# constants that grow with the step time (the rest are rates: the step shrinks as they grow)
TIME_CONSTANTS = ("op_overhead_s", "eager_traffic", "straggler_cv", "pipeline_instruction_s")
MODEL_CONSTANTS = tuple(f.name for f in dataclasses.fields(Constants))
# what an accelerator file holds, and so what `flopwise plan calibrate` fits (the cost model's own constants are
# fitted to published runs: benchmarks/planner_fit.py)
DEVICE_CONSTANTS = tuple(c for c in CONSTANTS if c not in MODEL_CONSTANTS)


def bounds(name: str, acc: Accelerator) -> tuple[float, float]:
    """CONSTANTS[name], an efficiency's ceiling raised on a measured device (hardware.efficiency_ceiling)."""
    lo, hi = CONSTANTS[name]
    return (lo, efficiency_ceiling(acc.measured)) if name in EFFICIENCIES else (lo, hi)


def _value(observation: Observation, name: str) -> float:
    """The value of constant `name` the observation starts from: its accelerator's or its cost model's."""
    return getattr(observation.constants if name in MODEL_CONSTANTS else observation.cluster.accelerator, name)


def _split(values: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """(accelerator fields, cost-model constants) of a name -> value mapping."""
    return ({k: v for k, v in values.items() if k not in MODEL_CONSTANTS},
            {k: v for k, v in values.items() if k in MODEL_CONSTANTS})


@dataclass(frozen=True)
class Observation:
    model: ModelConfig
    cluster: Cluster
    training: Training
    layout: Layout
    measured_step_s: float
    label: str = ""
    clock: str = "wall"  # how the step was timed: "wall", or "cpu" (CPU time per thread: no pipeline bubble)
    constants: Constants = DEFAULT_CONSTANTS  # the cost model's constants the prediction starts from

    def predict(self, constants: dict[str, float] | None = None) -> float:
        """The cost model's step time with `constants` set on this observation's accelerator (device constants)
        or cost model (Constants fields), as its clock sees it."""
        device, model = _split(constants or {})
        acc = dataclasses.replace(self.cluster.accelerator, **device)
        cluster = dataclasses.replace(self.cluster, accelerator=acc)
        plan = CostModel(self.model, cluster, self.training, dataclasses.replace(self.constants, **model)).evaluate(
            self.layout)
        return plan.busy_time if self.clock == "cpu" else plan.step_time


@dataclass
class Calibration:
    constants: dict[str, float]  # the fitted values
    before: list[float]  # predicted step times with the observations' own constants
    after: list[float]  # ... with the fitted ones
    observations: list[Observation]

    def accelerator(self, base: Accelerator | None = None) -> Accelerator:
        """`base` (default: the first observation's accelerator) with the fitted device constants."""
        base = base or self.observations[0].cluster.accelerator
        return dataclasses.replace(base, **_split(self.constants)[0])

    def model_constants(self, base: Constants = DEFAULT_CONSTANTS) -> Constants:
        """`base` with the fitted cost-model constants."""
        return dataclasses.replace(base, **_split(self.constants)[1])

    def errors(self, predicted: list[float]) -> list[float]:
        return [p / o.measured_step_s - 1.0 for p, o in zip(predicted, self.observations, strict=True)]


def fit(observations: list[Observation], constants: tuple[str, ...] | list[str] = ("gemm_efficiency",),
        iterations: int = 50, robust: float = 0.0) -> Calibration:
    """Fit `constants` (names in CONSTANTS) to the observations' measured step times.

    robust > 0: soft-L1 loss with that scale on the log errors (2 d^2 (sqrt(1 + (r / d)^2) - 1), as
    scipy.optimize.least_squares' 'soft_l1'), so that a few rows the model cannot express (an unstated network,
    an unusual machine) do not decide the constants; 0: plain least squares."""
    if not observations:
        raise DataError("no measured runs to calibrate on")
    unknown = [c for c in constants if c not in CONSTANTS]
    if unknown or not constants:
        raise ConfigError(f"constants {', '.join(unknown) or '(none)'}: choose from {', '.join(CONSTANTS)}")
    if len(constants) > len(observations):
        raise ConfigError(
            f"{len(constants)} constants cannot be fitted to {len(observations)} run(s): give more runs or fewer constants"
        )
    base = observations[0].cluster.accelerator
    lo, hi = (np.log([bounds(c, base)[i] for c in constants]) for i in (0, 1))
    x = np.clip(np.log([max(_value(observations[0], c), bounds(c, base)[0]) for c in constants]), lo, hi)
    measured = np.log([o.measured_step_s for o in observations])

    def residuals(v: np.ndarray) -> np.ndarray:
        values = dict(zip(constants, np.exp(v).tolist(), strict=True))
        r = np.log([o.predict(values) for o in observations]) - measured
        if robust > 0:  # residuals whose squares sum to the soft-L1 loss
            r = np.sign(r) * robust * np.sqrt(2 * (np.sqrt(1 + (r / robust) ** 2) - 1))
        return r

    before = [o.predict() for o in observations]
    r = residuals(x)
    damping = 1e-3
    for _ in range(iterations):
        jac = np.empty((len(observations), len(constants)))
        for j in range(len(constants)):
            step = np.zeros_like(x)
            step[j] = 1e-4
            jac[:, j] = (residuals(np.clip(x + step, lo, hi + 1e-4)) - r) / 1e-4
        grad, normal = jac.T @ r, jac.T @ jac
        improved = False
        while damping < 1e8:
            delta = np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-12), -grad)
            candidate = np.clip(x + delta, lo, hi)
            r_new = residuals(candidate)
            if r_new @ r_new < r @ r - 1e-15:
                x, r, damping, improved = candidate, r_new, max(damping / 10, 1e-9), True
                break
            damping *= 10
        if not improved or float(np.max(np.abs(delta))) < 1e-6:
            break
    values = dict(zip(constants, np.exp(x).tolist(), strict=True))
    return Calibration(values, before, [o.predict(values) for o in observations], list(observations))


def _metrics_file(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    if not path.exists():
        raise DataError(f"run {path}: no such run directory or metrics file")
    return path / "metrics.jsonl" if path.is_dir() else path


def plan_record(run_dir: str | Path) -> dict:
    """The last `plan_vs_measured` record of a training run (its folder or its metrics.jsonl)."""
    metrics = _metrics_file(run_dir)
    # torn or damaged bytes (a full disk, a killed writer) only spoil their own line
    lines = read_bytes(metrics, "metrics file").decode("utf-8", "replace").splitlines()
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "plan_vs_measured":
            records.append(record)
    if not records:
        raise DataError(f"{metrics}: no plan_vs_measured record (a finished `flopwise train` run writes one)")
    return records[-1]


def run_observation(run_dir: str | Path) -> Observation:
    """The last `plan_vs_measured` record of a training run (its metrics.jsonl) as an observation."""
    path, metrics = Path(run_dir), _metrics_file(run_dir)
    rec = plan_record(path)
    try:
        inp = rec["inputs"]
        fields = dict(inp["accelerator"])
        known = CATALOGUE.get(fields.get("name"))
        # a record written before the planner had these fields: the catalogue's values for its GPU
        for key in ("fp32_peak_flops", "tf32_peak_flops", "mesh_links", "nvfp4"):
            if key not in fields and known is not None:
                fields[key] = getattr(known, key)
        fields.pop("peer_bandwidth", None)  # the mesh's first form (one pair's link, 2026-12-06): mesh_links now
        acc = Accelerator(**fields)
        for key, value in dataclasses.asdict(acc).items():  # a damaged record, not a crash further on
            if key != "name" and not isinstance(value, bool) and not (
                    isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"accelerator {key} = {value!r}: not a non-negative number")
        if acc.peak_flops <= 0:
            raise ValueError(f"accelerator peak_flops = {acc.peak_flops!r}: must be positive")
        c = inp["cluster"]
        cluster = Cluster(acc, c["gpus"], c["gpus_per_node"], c["intra_node_bw"], c["inter_node_bw"])
        return Observation(ModelConfig.from_dict(inp["model"]), cluster, Training(**inp["training"]),
                           Layout.from_dict(inp["layout"]), positive("measured_step_s", float(rec["measured_step_s"])),
                           str(path),
                           rec.get("step_clock", "wall"))
    except (KeyError, TypeError, ValueError, FlopwiseError) as exc:
        raise DataError(f"{metrics}: malformed plan_vs_measured record ({exc})") from None


# a constant whose effect on the runs is mostly that of the constants chosen before it is left out of the default fit:
# the runs cannot tell it apart, and fitting it lets the two trade off without bound (on a CPU, micro-batch 8 and 2
# spend the same shares of their step on GEMMs and on elementwise passes; benchmarks/RESULTS.md, "Calibrating a CPU
# past its start-up timings")
MIN_OWN_EFFECT = 0.2


def sensitivity(observations: list[Observation], name: str) -> np.ndarray:
    """d log(predicted step) / d log(constant) per observation, at the observations' own value of the constant."""
    value = _value(observations[0], name)
    if value <= 0:
        return np.zeros(len(observations))
    step = 1e-3
    base = np.log([o.predict() for o in observations])
    moved = np.log([o.predict({name: value * math.exp(step)}) for o in observations])
    return (moved - base) / step


def default_constants(observations: list[Observation]) -> list[str]:
    """What the runs can tell apart, among GEMM efficiency, the link (where a run communicates) and memory efficiency
    (where the device has a bandwidth figure): strongest effect on the runs first (the norm of its sensitivity
    column), each taken where at least MIN_OWN_EFFECT of its effect is not a combination of those taken before it
    (of two that move the runs alike, the one that moves them more), none that does not move them; no more constants
    than runs; in that order of names."""
    candidates = ["gemm_efficiency"]
    if any(o.layout.gpus > 1 for o in observations):
        candidates.append("link_bandwidth")
    if all(o.cluster.accelerator.memory_bandwidth > 0 for o in observations):
        candidates.append("memory_efficiency")
    columns = {name: sensitivity(observations, name) for name in candidates}
    chosen: list[str] = []
    for name in sorted(candidates, key=lambda n: -float(np.linalg.norm(columns[n]))):
        column, norm = columns[name], float(np.linalg.norm(columns[name]))
        if norm == 0 or len(chosen) == len(observations):
            continue
        if chosen:
            basis = np.column_stack([columns[c] for c in chosen])
            own = column - basis @ np.linalg.lstsq(basis, column, rcond=None)[0]
            if np.linalg.norm(own) < MIN_OWN_EFFECT * norm:
                continue
        chosen.append(name)
    return [c for c in candidates if c in chosen] or ["gemm_efficiency"]


# runs whose measured peaks differ more than this ran with different threads per process (cpu_seconds divides by
# them; `flopwise train --nproc` gives each rank its share of the cores) or on a machine busy with other work while
# one of them timed its start-up: no single file describes both
MAX_PEAK_SPREAD = 1.5


def on_one_device(observations: list[Observation], held: list[Observation] = ()) -> list[Observation]:
    """The observations, then `held`, set on one accelerator, the one an accelerator file can describe. Runs on a
    measured CPU each carry their own start-up measurement, which differs from run to run; they are all set on the
    merge of the measurements of `observations` (hardware.merge_measured; the runs fitted on: a held-out run's own
    measurement does not shape the file it is scored with), so the calibrated file predicts what the fit reports.
    Runs on different accelerators, or on one CPU with different threads per process, are refused: one file, one
    device."""
    everything = list(observations) + list(held)
    accs = [o.cluster.accelerator for o in everything]
    names = sorted({a.name for a in accs})
    if len(names) > 1:
        raise ConfigError(f"the runs ran on different accelerators ({', '.join(names)}): calibrate one at a time")
    if all(a == accs[0] for a in accs):
        return everything
    peaks = [a.peak_flops for a in accs]
    if min(peaks) > 0 and max(peaks) > MAX_PEAK_SPREAD * min(peaks):
        raise ConfigError(
            f"the runs measured peaks from {min(peaks) / 1e12:.3g} to {max(peaks) / 1e12:.3g} TFLOP/s per process, "
            f"more than {MAX_PEAK_SPREAD:g}x apart, so no one file describes them; different threads per process (a "
            "`--nproc` run's ranks share the cores) or other work on the machine during a run's start-up timing do "
            "that: calibrate runs with the same threads per process, made on an otherwise idle machine (rerun the "
            "odd one)")
    reference = merge_measured([o.cluster.accelerator for o in observations] or accs)
    return [dataclasses.replace(o, cluster=dataclasses.replace(o.cluster, accelerator=reference)) for o in everything]


def check_device_constants(names: list[str], observations: list[Observation]) -> None:
    """Refuse constants an accelerator file cannot hold or these runs cannot constrain."""
    other = [n for n in names if n not in DEVICE_CONSTANTS]
    if other:
        raise ConfigError(f"--fit {', '.join(other)}: an accelerator file holds {', '.join(DEVICE_CONSTANTS)}; the cost "
                          "model's own constants are fitted to published runs (benchmarks/planner_fit.py)")
    if "link_bandwidth" in names and not any(o.layout.gpus > 1 for o in observations):
        raise ConfigError("--fit link_bandwidth: every run to fit on ran in one process, so none of them uses the link")
    if "memory_efficiency" in names and not all(o.cluster.accelerator.memory_bandwidth > 0 for o in observations):
        raise ConfigError("--fit memory_efficiency: the accelerator has no memory-bandwidth figure to scale")
    if "op_overhead_s" in names and not any(o.training.software == "flopwise" and o.cluster.accelerator.measured
                                            for o in observations):
        raise ConfigError("--fit op_overhead_s: the host time per op is costed for flopwise's own eager model on a "
                          "measured CPU only (a GPU's host runs ahead of its kernels), and none of the runs to fit on "
                          "is one")
    if "attention_efficiency" in names and not any(o.training.profile.attention == "flash" for o in observations):
        raise ConfigError("--fit attention_efficiency: none of the runs to fit on ran fused attention")


def _distinct(runs: list[Path], holdout: list[Path]) -> None:
    seen: dict[Path, str] = {}
    for role, paths in (("to fit on", runs), ("held out", holdout)):
        for path in paths:
            key = _metrics_file(path).resolve()  # a run's folder and its metrics file are one run
            if key in seen:
                raise ConfigError(f"run {path} is given twice ({seen[key]} and {role}): each run counts once")
            seen[key] = role


@dataclass
class Report:
    """What `flopwise plan calibrate` prints: per run, its prediction before (the trainer's own, from the run's
    start-up measurement) and after (the calibrated accelerator's, which the written file reproduces)."""
    constants: dict[str, float]
    accelerator: Accelerator
    rows: list[dict]
    warnings: list[str]

    def median_error(self, role: str, key: str) -> float | None:
        errors = [abs(r[key]) for r in self.rows if r["role"] == role]
        return float(np.median(errors)) if errors else None


def calibrate_runs(runs: list[str | Path], holdout: list[str | Path] = (), names: list[str] | None = None) -> Report:
    """Fit the device constants `names` (default: what the runs can tell apart) to finished training runs and score
    the held-out ones, every run on one accelerator (`on_one_device`)."""
    _distinct([Path(r) for r in runs], [Path(r) for r in holdout])
    fit_on, held = [run_observation(r) for r in runs], [run_observation(r) for r in holdout]
    device = on_one_device(fit_on, held)
    names = list(names) if names else default_constants(device[: len(fit_on)])
    check_device_constants(names, fit_on)
    result = fit(device[: len(fit_on)], names)
    rows = []
    for role, own, obs in [("fit", o, d) for o, d in zip(fit_on, device[: len(fit_on)], strict=True)] + [
            ("holdout", o, d) for o, d in zip(held, device[len(fit_on):], strict=True)]:
        before, after = own.predict(), obs.predict(result.constants)
        rows.append({"run": own.label, "role": role, "layout": own.layout.short(), "measured_s": own.measured_step_s,
                     "predicted_before_s": before, "predicted_after_s": after,
                     "error_before": before / own.measured_step_s - 1, "error_after": after / own.measured_step_s - 1})
    report = Report(result.constants, result.accelerator(), rows, [])
    start = device[0].cluster.accelerator
    for name, value in result.constants.items():
        lo, hi = bounds(name, start)
        moved = not math.isclose(value, getattr(start, name), rel_tol=1e-4)
        at = "lower" if moved and value <= lo * 1.0001 else "upper" if moved and value >= hi * 0.9999 else None
        if at is None:
            continue
        if (at == "lower") == (name not in TIME_CONSTANTS):  # the runs are slower than any value in bounds explains
            report.warnings.append(
                f"{name} stopped at its {at} bound ({value:.3g}): the runs took far longer than the model allows; "
                "check that they ran alone (on a CPU, time per thread grows when other processes share the cores)")
        else:
            report.warnings.append(
                f"{name} stopped at its {at} bound ({value:.3g}): the runs were faster than the model allows with "
                "it; the other constants carry the rest")
    before, after = report.median_error("holdout", "error_before"), report.median_error("holdout", "error_after")
    if before is not None and after > before:
        report.warnings.append(
            f"the held-out runs are predicted worse after calibrating (median |error| {100 * before:.1f}% -> "
            f"{100 * after:.1f}%): the runs fitted on do not stand for them (a busy machine, or too few layouts)")
    return report
