"""The Pollux artifact's measured job models (`../shared/traces/pollux/apps/<app>/`, semantics in its
README): step time per placement and per-GPU batch, gradient statistics per epoch and batch size.

Throughput: a placement measured in `placements.csv` (one digit per node, normalised to its smallest
rotation, as the artifact does) is interpolated linearly over the per-GPU batch; any other placement is
interpolated linearly over (nodes, GPUs, per-GPU batch) between the measured placements (averaged per
(nodes, GPUs, batch)) and the `scalability.csv` rows, nodes capped at 16 (scipy's Delaunay-based linear
interpolation, the artifact's choice).

Statistical efficiency (McCandlish et al. 2018; Pollux, Qiao et al. OSDI'21, eq. 2): at batch B with
initial batch B0 and gradient noise and signal var, sqr, one step at B is worth
    gain = (var + sqr) / (var / (B / B0) + sqr)
steps at B0; goodput = gain / step time is progress per second, and a job is done when its progress
reaches the progress of its last epoch. var and sqr are interpolated linearly between the two measured
batch sizes around B, at the current epoch.
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flopwise.errors import DataError

# The published setup (the artifact's simulator/applications.py): epochs each application trains for,
# and yolov3's per-GPU batch limit (its measurements go beyond what fits in memory in training).
APP_SETTINGS = {
    "bert": {"max_epochs": 2},
    "cifar10": {"max_epochs": 100},
    "deepspeech2": {"max_epochs": 80},
    "imagenet": {"max_epochs": 90},
    "ncf": {"max_epochs": 10},
    "yolov3": {"max_epochs": 50, "max_local_bsz": 8},
}
MAX_NODES_INTERPOLATED = 16
EPS = 1e-8


@dataclass(frozen=True)
class BatchConfig:
    atomic: int  # per-GPU batch of one forward/backward
    accum: int  # extra accumulation steps per optimizer step
    replicas: int

    @property
    def batch(self) -> int:
        return self.replicas * self.atomic * (self.accum + 1)


def _read_csv(path: Path, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
            rows = list(reader)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not rows:
        raise DataError(f"{path}: no rows")
    out = {}
    for c in columns:
        try:
            out[c] = np.array([float(r[c]) for r in rows])
        except (TypeError, ValueError):
            bad = next(i for i, r in enumerate(rows, 2) if not _is_float(r[c]))
            raise DataError(f"{path}:{bad}: column {c} = {rows[bad - 2][c]!r} is not a number") from None
        if not np.all(np.isfinite(out[c])):
            raise DataError(f"{path}: column {c} has a non-finite value")
    return out


def _is_float(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


class PolluxApp:
    def __init__(self, directory: str | Path, max_epochs: int | None = None, max_local_bsz: int | None = None):
        directory = Path(directory)
        self.name = directory.name
        self.validation: dict[int, dict[str, np.ndarray]] = {}
        for path in sorted(directory.glob("validation-*.csv")):
            try:
                bsz = int(path.stem.split("-")[-1])
            except ValueError:
                raise DataError(f"{path}: expected validation-<batch size>.csv") from None
            self.validation[bsz] = _read_csv(path, ("progress", "iteration", "metric", "grad_sqr", "grad_var"))
        if not self.validation:
            raise DataError(f"{directory}: no validation-<batch>.csv files (is it a Pollux application folder?)")
        self.batch_sizes = sorted(self.validation)
        place = _read_csv(directory / "placements.csv", ("placement", "local_bsz", "step_time", "sync_time"))
        scal = _read_csv(directory / "scalability.csv", ("num_nodes", "num_replicas", "local_bsz", "step_time", "sync_time"))
        self.placements: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        by_id: dict[tuple[int, ...], list[int]] = {}
        for i, pid in enumerate(place["placement"]):
            digits = tuple(int(d) for d in str(int(pid)))
            by_id.setdefault(digits, []).append(i)
        grouped: dict[tuple[int, int, float], list[int]] = {}
        for key, rows in by_id.items():
            rows.sort(key=lambda i: place["local_bsz"][i])
            self.placements[key] = tuple(place[c][rows] for c in ("local_bsz", "step_time", "sync_time"))
            for i in rows:
                grouped.setdefault((len(key), sum(key), float(place["local_bsz"][i])), []).append(i)
        points = [list(k) for k in grouped]
        values = [[place["step_time"][r].mean(), place["sync_time"][r].mean()] for r in grouped.values()]
        points += np.stack([scal["num_nodes"], scal["num_replicas"], scal["local_bsz"]], axis=1).tolist()
        values += np.stack([scal["step_time"], scal["sync_time"]], axis=1).tolist()
        self._points, self._values = np.array(points), np.array(values)
        self._interp = None  # built on first use (scipy)
        settings = APP_SETTINGS.get(self.name, {})
        rows = min(len(v["progress"]) for v in self.validation.values())
        self.max_epochs = int(max_epochs or settings.get("max_epochs", rows))
        if self.max_epochs > rows:
            raise DataError(f"{directory}: {self.max_epochs} epochs but the validation files have {rows} rows")
        self.init_batch = self.batch_sizes[0]
        self.max_batch = self.batch_sizes[-1]
        self.min_local = int(place["local_bsz"].min())
        self.max_local = int(max_local_bsz or settings.get("max_local_bsz", place["local_bsz"].max()))
        self.work = self.progress_at(self.max_epochs)  # progress needed to finish

    # -- measured tables ---------------------------------------------------------------------------------
    @functools.cache  # noqa: B019 - one app object per application, kept for a run
    def throughput(self, placement: tuple[int, ...], local_bsz: float) -> tuple[float, float]:
        """(step time, sync time) in seconds of one step at `local_bsz` per GPU on `placement`."""
        placement = tuple(p for p in placement if p)
        key = min(placement[i:] + placement[:i] for i in range(len(placement)))
        if key in self.placements:
            bsz, step, sync = self.placements[key]
            return float(np.interp(local_bsz, bsz, step)), float(np.interp(local_bsz, bsz, sync))
        if self._interp is None:
            from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator

            self._interp = (
                LinearNDInterpolator(self._points, self._values),
                NearestNDInterpolator(self._points, self._values),
            )
        x = [min(len(placement), MAX_NODES_INTERPOLATED), sum(placement), local_bsz]
        out = self._interp[0]([x])[0]
        if not np.all(np.isfinite(out)):  # outside the measured hull: the nearest measurement
            out = self._interp[1]([x])[0]
        return float(out[0]), float(out[1])

    def _bracket(self, batch: float) -> tuple[int, int]:
        lower = max((b for b in self.batch_sizes if b <= batch), default=self.batch_sizes[0])
        upper = min((b for b in self.batch_sizes if b >= batch), default=self.batch_sizes[-1])
        return lower, upper

    @functools.cache  # noqa: B019
    def grad_stats(self, batch: float, epoch: int) -> tuple[float, float]:
        """(grad_sqr, grad_var) during `epoch` at global batch `batch`."""
        lo, hi = self._bracket(batch)
        a, b = self.validation[lo], self.validation[hi]
        if lo == hi:
            return float(a["grad_sqr"][epoch]), float(a["grad_var"][epoch])
        w = (batch - lo) / (hi - lo)
        return (
            float((1 - w) * a["grad_sqr"][epoch] + w * b["grad_sqr"][epoch]),
            float((1 - w) * a["grad_var"][epoch] + w * b["grad_var"][epoch]),
        )

    @functools.cache  # noqa: B019
    def progress_at(self, epoch: int) -> float:
        """Progress at the end of epoch `epoch` (0: nothing)."""
        if epoch <= 0:
            return 0.0
        return float(min(v["progress"][epoch - 1] for v in self.validation.values()))

    # -- a job's configuration and speed -----------------------------------------------------------------
    def fixed_config(self, replicas: int, batch: int) -> BatchConfig:
        """Per-GPU batch and gradient accumulation for a fixed global batch (the artifact's rule: split
        over replicas, accumulate above the per-GPU limit, at least two micro-batches on one GPU when the
        batch exceeds the initial one, never beyond the largest batch measured)."""
        local = math.ceil(batch / replicas - EPS)
        accum = math.ceil(local / self.max_local - EPS) - 1
        if replicas == 1 and batch > self.init_batch:
            accum = max(1, accum)
        atomic = math.ceil(local / (accum + 1) - EPS)
        atomic = min(atomic, int(self.max_batch / (replicas * (accum + 1))))
        return BatchConfig(max(1, atomic), accum, replicas)

    @functools.cache  # noqa: B019
    def goodput(self, placement: tuple[int, ...], config: BatchConfig, epoch: int) -> float:
        """Progress per second at `config` on `placement` during `epoch`."""
        step, sync = self.throughput(placement, config.atomic)
        total = step + (step - sync) * config.accum
        sqr, var = self.grad_stats(config.batch, min(epoch, self.max_epochs - 1))
        scale = config.batch / self.init_batch
        denom = var / scale + sqr
        gain = (var + sqr) / denom if denom > 0 else 1.0
        return gain / total

    @functools.cache  # noqa: B019
    def best_config(self, placement: tuple[int, ...], epoch: int) -> BatchConfig:
        """The batch size with the highest goodput on `placement` at `epoch` (Pollux's choice, made here
        with the measured tables): 50 global batches spaced geometrically from the smallest allowed to
        the largest measured, each split as in `fixed_config`."""
        replicas = sum(placement)
        lo = max(self.init_batch, self.min_local * replicas)
        if lo > self.max_batch:
            return self.fixed_config(replicas, self.max_batch)
        best, best_value = None, -1.0
        for batch in np.geomspace(lo, self.max_batch, 50):
            local = batch / replicas
            accum = math.ceil(local / self.max_local - EPS) - 1
            if replicas == 1 and local > self.init_batch + EPS:
                accum = max(accum, 1)
            atomic = math.ceil(local / (accum + 1) - EPS)
            if not self.min_local <= atomic <= self.max_local:
                continue
            atomic = min(atomic, int(self.max_batch / (replicas * (accum + 1))))
            config = BatchConfig(atomic, accum, replicas)
            value = self.goodput(placement, config, epoch)
            if value > best_value:
                best, best_value = config, value
        return best or self.fixed_config(replicas, lo)

    def epoch_of(self, progress: float) -> int:
        """The epoch a job with `progress` is in."""
        epoch = 0
        while epoch < self.max_epochs and self.progress_at(epoch + 1) <= progress + EPS:
            epoch += 1
        return epoch


def load_apps(directory: str | Path) -> dict[str, PolluxApp]:
    """Every application folder under `directory` (one folder per application)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"application folder {directory} does not exist (give --apps DIR)")
    apps = {}
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
        apps[sub.name] = PolluxApp(sub)
    if not apps:
        raise DataError(f"{directory}: no application folders")
    return apps
