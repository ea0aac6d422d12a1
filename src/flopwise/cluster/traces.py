"""Workload readers: the Pollux artifact's workloads, the Philly trace, the Alibaba openb pod list, and
flopwise's own TOML of LLM jobs. Each returns a `Workload` (cluster, jobs, job models, skipped rows).

Bad rows (wrong column count, a non-number, a negative duration) are skipped and listed with their line
and reason in the results; a file that is missing, has the wrong header or no usable row is an error
(one line). Jobs that can never run (unknown application, larger than the cluster, beyond any quota, a
model that fits nowhere) are not decided here: the scheduler rejects them with a reason.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import tomllib
from collections.abc import Iterator
from pathlib import Path

from flopwise.cluster.apps import PolluxApp, load_apps
from flopwise.cluster.jobmodels import JobModels, packed_shape
from flopwise.cluster.simulator import Workload
from flopwise.cluster.spec import ClusterQueue, ClusterSpec, Flavor, JobSpec, NodeSpec
from flopwise.cluster.speed import PlannerSpeeds, model_config
from flopwise.errors import ConfigError, DataError
from flopwise.hardware import get_accelerator

FORMATS = ("pollux", "philly", "openb", "flopwise")
POLLUX_MAX_REPLICAS = 64  # the artifact's cap on a Pollux job's GPUs ("simulator can't handle more")


def detect_format(path: str | Path) -> str:
    """The format of a workload file from its suffix or CSV header."""
    path = Path(path)
    if path.suffix == ".toml":
        return "flopwise"
    try:
        with open(path, newline="") as fh:
            header = fh.readline().strip().split(",")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    for fmt, columns in (("pollux", {"time", "application", "num_replicas"}), ("philly", {"timestamp", "duration"}),
                         ("openb", {"num_gpu", "creation_time"})):
        if columns <= set(header):
            return fmt
    raise DataError(f"{path}: cannot tell its format from the header ({','.join(header)[:80]}); give --format")


def _rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str] | None, str]]:
    """(line, row, problem) for each data line; row is None when the line is malformed."""
    try:
        fh = open(path, newline="")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a CSV file ({exc})") from None
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)} (header: {','.join(header)[:120]})")
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as exc:
                yield reader.line_num, None, f"unreadable line ({exc})"
                continue
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                yield reader.line_num, None, f"{len(values)} fields, expected {len(header)} (truncated?)"
                continue
            yield reader.line_num, dict(zip(header, values, strict=True)), ""


def _number(row: dict[str, str], key: str, kind=float, minimum: float | None = None):
    value = kind(float(row[key])) if kind is int else kind(row[key])
    if kind is int and float(row[key]) != value:
        raise ValueError(f"{key} = {row[key]!r} is not a whole number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key} = {row[key]!r} is not finite")
    if minimum is not None and value < minimum:
        raise ValueError(f"{key} = {row[key]!r} must be >= {minimum:g}")
    return value


def _skip(skipped: list[dict], path: Path, line: int, why: str) -> None:
    skipped.append({"file": path.name, "line": line, "reason": why})


def _require_jobs(path: Path, jobs: list, skipped: list[dict]) -> None:
    if not jobs:
        detail = f"; first problem: line {skipped[0]['line']}: {skipped[0]['reason']}" if skipped else ""
        raise DataError(f"{path}: no usable job rows{detail}")


# -- the Pollux artifact ---------------------------------------------------------------------------------
def read_pollux(path: str | Path, cluster: ClusterSpec, apps_dir: str | Path, adaptive: bool) -> Workload:
    """`name,time,application,num_replicas,batch_size`. Fixed-size policies get the published
    'TunedJobs' (num_replicas GPUs, batch_size fixed); with `adaptive` (the goodput policy) every job but
    ncf may take 1..64 GPUs and choose its batch size, as the artifact's Pollux jobs do (ncf stays at one
    GPU and batch 32768 there too)."""
    path = Path(path)
    apps = load_apps(apps_dir)
    jobs, skipped = [], []
    for line, row, problem in _rows(path, ("name", "time", "application", "num_replicas", "batch_size")):
        if row is None:
            _skip(skipped, path, line, problem)
            continue
        try:
            time = _number(row, "time", float, 0)
            replicas = _number(row, "num_replicas", int, 1)
            batch = _number(row, "batch_size", int, 1)
            name, app_name = row["name"].strip(), row["application"].strip()
            if not name:
                raise ValueError("empty name")
        except ValueError as exc:
            _skip(skipped, path, line, str(exc))
            continue
        app = apps.get(app_name)
        elastic = adaptive and app is not None and app_name != "ncf"
        top = _pollux_max(app) if elastic else replicas
        jobs.append(
            JobSpec(
                name,
                kind="train",
                gpus=replicas if replicas <= top else top,
                min_gpus=1 if elastic else 0,
                max_gpus=top if elastic else 0,
                app=app_name,
                global_batch=batch,
                adaptive_batch=elastic,
                submit_time=time,
            )
        )
    _require_jobs(path, jobs, skipped)
    return Workload(cluster, jobs, JobModels(cluster, apps=apps), skipped, source=f"pollux:{path.name}")


def _pollux_max(app: PolluxApp) -> int:
    return max(1, min(POLLUX_MAX_REPLICAS, app.max_batch // app.min_local))


# -- Philly ----------------------------------------------------------------------------------------------
def read_philly(path: str | Path, cluster: ClusterSpec | None, nodes: int, gpus_per_node: int,
                queues: str = "per-vc") -> Workload:
    """`timestamp,duration,num_gpus,gpu_time,cluster`: arrival (ISO time; seconds from the first
    arrival), run time and GPUs of each job. `queues="per-vc"`: one ClusterQueue per virtual cluster,
    all in one cohort, nominal quota in proportion to the VC's share of the trace's GPU time (largest
    remainder), so an idle VC's GPUs are borrowed and reclaimed; "single": one queue."""
    path = Path(path)
    rows, skipped = [], []
    for line, row, problem in _rows(path, ("timestamp", "duration", "num_gpus", "cluster")):
        if row is None:
            _skip(skipped, path, line, problem)
            continue
        try:
            when = dt.datetime.fromisoformat(row["timestamp"].strip())
            duration = _number(row, "duration", float, 0)
            gpus = _number(row, "num_gpus", int, 1)
            if duration <= 0:
                raise ValueError(f"duration = {row['duration']!r} must be > 0")
        except ValueError as exc:
            _skip(skipped, path, line, str(exc))
            continue
        rows.append((when, duration, gpus, row["cluster"].strip() or "default", line))
    _require_jobs(path, rows, skipped)
    t0 = min(r[0] for r in rows)
    rows.sort(key=lambda r: (r[0], r[4]))
    if cluster is None:
        vcs: dict[str, float] = {}
        for _, duration, gpus, vc, _ in rows:
            vcs[vc] = vcs.get(vc, 0.0) + duration * gpus
        queue_specs = _vc_queues(vcs, nodes * gpus_per_node, "gpu") if queues == "per-vc" else None
        cluster = ClusterSpec.uniform(nodes, gpus_per_node, flavor="gpu", queues=queue_specs)
    per_vc = queues == "per-vc"
    jobs = [
        JobSpec(
            f"philly-{line}",
            kind="trace",
            queue=vc if per_vc and vc in cluster.local_queues else "default",
            gpus=gpus,
            duration_s=duration,
            submit_time=(when - t0).total_seconds(),
        )
        for when, duration, gpus, vc, line in rows
    ]
    return Workload(cluster, jobs, JobModels(cluster), skipped, source=f"philly:{path.name}")


def _vc_queues(gpu_time: dict[str, float], total: int, flavor: str) -> dict[str, ClusterQueue]:
    whole = sum(gpu_time.values())
    exact = {vc: total * g / whole for vc, g in gpu_time.items()}
    quota = {vc: int(x) for vc, x in exact.items()}
    for vc in sorted(exact, key=lambda v: (quota[v] - exact[v], v))[: total - sum(quota.values())]:
        quota[vc] += 1
    return {vc: ClusterQueue(vc, {flavor: q}, cohort="philly") for vc, q in sorted(quota.items())}


# -- Alibaba openb ---------------------------------------------------------------------------------------
# The openb GPU models as catalogue accelerators. G2 and G3 are undisclosed ("internal GPU codes" in the
# trace's README): we assume A100-class parts, the datacenter GPUs of that fleet's era a provider would
# not name; G3's nodes carry twice G2's host memory (768 vs 384 GiB for 8 GPUs), so G3 = 80 GB and
# G2 = 40 GB. Override with --gpu-map G2=...,G3=... to test other assumptions.
OPENB_GPUS = {
    "G2": "A100-40GB",
    "G3": "A100-80GB",
    "T4": "T4",
    "P100": "P100",
    "V100M16": "V100-16GB",
    "V100M32": "V100-32GB",
    "A10": "A10",
}
OPENB_REFERENCE = "V100-32GB"  # a pod's duration is its run time on this part
# LLM jobs a pod becomes, by GPU count (model, overrides, global batch): ~0.45B on one GPU (yuan-1b with
# 8 of its 16 layers), yuan-1b on 2-4, yuan2-2b on 8.
OPENB_MODELS = {
    1: ("yuan-1b", (("layers", 8),), 64),
    2: ("yuan-1b", (), 128),
    4: ("yuan-1b", (), 128),
    8: ("yuan2-2b", (), 256),
}


def read_openb(path: str | Path, cluster: ClusterSpec | None, gpu_map: dict[str, str] | None = None,
               planner: PlannerSpeeds | None = None) -> Workload:
    """Pods of `openb_pod_list_*.csv` as LLM training jobs on the heterogeneous openb cluster (the node
    list beside it, `openb_node_list_gpu_node.csv`, unless a cluster is given).

    Each pod that asked for GPUs and was scheduled becomes a training job arriving at its creation time,
    on max(1, num_gpu) whole GPUs (a shared fraction becomes one GPU: training does not share), of the
    model OPENB_MODELS gives for that count, with as many tokens as that model processes on the pod's
    GPU count of OPENB_REFERENCE in the pod's run time (deletion - scheduled): on a V100 it would take
    as long as the pod did. `gpu_spec` constraints become the job's allowed flavors."""
    path = Path(path)
    planner = planner or PlannerSpeeds()
    mapping = dict(OPENB_GPUS, **(gpu_map or {}))
    if cluster is None:
        cluster = read_openb_nodes(path.parent / "openb_node_list_gpu_node.csv", mapping)
    models = JobModels(cluster, planner=planner)
    jobs, skipped = [], []
    cols = ("name", "num_gpu", "gpu_milli", "gpu_spec", "creation_time", "deletion_time", "scheduled_time")
    for line, row, problem in _rows(path, cols):
        if row is None:
            _skip(skipped, path, line, problem)
            continue
        try:
            gpus = _number(row, "num_gpu", int, 0)
            if gpus == 0:
                continue  # a CPU pod: not a GPU job (counted in the trace, not here)
            if not row["scheduled_time"].strip():
                raise ValueError("never scheduled in the trace (run time unknown)")
            created = _number(row, "creation_time", float, 0)
            duration = _number(row, "deletion_time", float) - _number(row, "scheduled_time", float)
            if duration <= 0:
                raise ValueError(f"run time {duration:g} s is not positive")
        except ValueError as exc:
            _skip(skipped, path, line, str(exc))
            continue
        size = next((k for k in sorted(OPENB_MODELS) if k >= gpus), max(OPENB_MODELS))
        preset, overrides, batch = OPENB_MODELS[size]
        spec_types = [t.strip() for t in row["gpu_spec"].split("|") if t.strip()]
        flavors = tuple(dict.fromkeys(t for t in spec_types))
        unknown = [t for t in flavors if t not in cluster.flavors]
        if unknown:
            _skip(skipped, path, line, f"gpu_spec names unknown GPU type(s) {', '.join(unknown)}")
            continue
        jobs.append(
            JobSpec(
                row["name"].strip() or f"pod-{line}",
                kind="train",
                gpus=gpus,
                flavors=flavors,
                model=preset,
                model_overrides=overrides,
                global_batch=batch,
                tokens=duration * _reference_speed(planner, size, gpus),
                submit_time=created,
            )
        )
    _require_jobs(path, jobs, skipped)
    return Workload(cluster, jobs, models, skipped, source=f"openb:{path.name}")


def _reference_speed(planner: PlannerSpeeds, size: int, gpus: int) -> float:
    preset, overrides, batch = OPENB_MODELS[size]
    shape = packed_shape(gpus, 8)
    per_node = shape[0] if len(set(shape)) == 1 else math.gcd(*shape)
    speed = planner.speed(model_config(preset, overrides), get_accelerator(OPENB_REFERENCE), gpus, per_node, batch)
    if speed.tokens_per_s <= 0:
        raise ConfigError(f"openb mapping: {preset} does not fit {gpus} x {OPENB_REFERENCE}: {speed.layout}")
    return speed.tokens_per_s


def read_openb_nodes(path: str | Path, mapping: dict[str, str] | None = None) -> ClusterSpec:
    """`sn,cpu_milli,memory_mib,gpu,model`: one flavor per GPU model (its accelerator from `mapping`)."""
    path = Path(path)
    mapping = dict(OPENB_GPUS, **(mapping or {}))
    nodes, flavors, skipped = [], {}, []
    for line, row, problem in _rows(path, ("sn", "gpu", "model")):
        if row is None:
            _skip(skipped, path, line, problem)
            continue
        try:
            gpus = _number(row, "gpu", int, 0)
        except ValueError as exc:
            _skip(skipped, path, line, str(exc))
            continue
        model = row["model"].strip()
        if gpus == 0 or not model:
            continue
        if model not in flavors:
            flavors[model] = Flavor(model, mapping.get(model))
        per_flavor = sum(1 for n in nodes if n.flavor == model)
        nodes.append(NodeSpec(row["sn"].strip(), model, gpus, rack=f"{model}-rack-{per_flavor // 16}"))
    if not nodes:
        raise DataError(f"{path}: no GPU nodes")
    return ClusterSpec.build(flavors, tuple(nodes))


def parse_gpu_map(text: str | None) -> dict[str, str]:
    """'G2=A100-40GB,G3=H100-SXM' -> {'G2': 'A100-40GB', 'G3': 'H100-SXM'}."""
    out = {}
    for item in filter(None, (p.strip() for p in (text or "").split(","))):
        if "=" not in item:
            raise ConfigError(f"--gpu-map item {item!r}: expected MODEL=ACCELERATOR")
        k, v = (x.strip() for x in item.split("=", 1))
        out[k] = v
    return out


# -- flopwise TOML ---------------------------------------------------------------------------------------
def read_flopwise(path: str | Path, cluster: ClusterSpec, planner: PlannerSpeeds | None = None) -> Workload:
    """A TOML file of `[[jobs]]` tables with JobSpec's keys (see the README), e.g.

        [[jobs]]
        name = "pretrain-2b"; queue = "research"; model = "yuan2-2b"; global_batch = 256; tokens = 2e9
        gpus = "8..32"; submit_time = 0
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read workload file {path}: {exc}") from None
    unknown = sorted(set(data) - {"jobs"})
    if unknown:
        raise ConfigError(f"workload file {path}: unknown key(s) {', '.join(unknown)}; expected [[jobs]] tables")
    rows = data.get("jobs", [])
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"workload file {path}: no [[jobs]] tables")
    jobs = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ConfigError(f"workload file {path}: jobs[{i}] is not a table")
        row = dict(row)
        row.setdefault("name", f"job-{i}")
        row.setdefault("kind", "train" if "model" in row else "command")
        jobs.append(JobSpec.from_dict(row))
    return Workload(cluster, jobs, JobModels(cluster, planner=planner), [], source=f"flopwise:{path.name}")
