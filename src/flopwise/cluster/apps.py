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

import bisect
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
        self._ends = [self.progress_at(e) for e in range(self.max_epochs + 1)]
        self._sizes = np.array(self.batch_sizes, dtype=float)
        self._sqr = np.stack([self.validation[b]["grad_sqr"][: self.max_epochs] for b in self.batch_sizes])
        self._var = np.stack([self.validation[b]["grad_var"][: self.max_epochs] for b in self.batch_sizes])

    # -- measured tables ---------------------------------------------------------------------------------
    @functools.cache  # noqa: B019 - one app object per application, kept for a run
    def throughput(self, placement: tuple[int, ...], local_bsz: float) -> tuple[float, float]:
        """(step time, sync time) in seconds of one step at `local_bsz` per GPU on `placement`."""
        step, sync = self._throughputs(placement, np.array([float(local_bsz)]))
        return float(step[0]), float(sync[0])

    def _throughputs(self, placement: tuple[int, ...], local_bsz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        placement = tuple(p for p in placement if p)
        key = min(placement[i:] + placement[:i] for i in range(len(placement)))
        if key in self.placements:
            bsz, step, sync = self.placements[key]
            return np.interp(local_bsz, bsz, step), np.interp(local_bsz, bsz, sync)
        grid = self._grid(key)
        if grid is not None:  # per-GPU batches are integers: the interpolant on every integer, computed once
            return np.interp(local_bsz, grid[0], grid[1]), np.interp(local_bsz, grid[0], grid[2])
        return self._interpolate(key, local_bsz)

    def _interpolate(self, placement: tuple[int, ...], local_bsz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._interp is None:
            from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator

            self._interp = (
                LinearNDInterpolator(self._points, self._values),
                NearestNDInterpolator(self._points, self._values),
            )
        x = np.column_stack([np.full(len(local_bsz), min(len(placement), MAX_NODES_INTERPOLATED)),
                             np.full(len(local_bsz), sum(placement)), local_bsz])
        out = self._interp[0](x)
        bad = ~np.all(np.isfinite(out), axis=1)
        if bad.any():  # outside the measured hull: the nearest measurement
            out[bad] = self._interp[1](x[bad])
        return out[:, 0], out[:, 1]

    @functools.cache  # noqa: B019
    def _grid(self, placement: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        top = max(self.max_local, int(self._points[:, 2].max()))
        if top - self.min_local > 8192:
            return None
        bsz = np.arange(self.min_local, top + 1, dtype=float)
        step, sync = self._interpolate(placement, bsz)
        return bsz, step, sync

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
        local = np.geomspace(lo, self.max_batch, 50) / replicas
        accum = np.ceil(local / self.max_local - EPS) - 1
        if replicas == 1:
            accum = np.where(local > self.init_batch + EPS, np.maximum(accum, 1), accum)
        atomic = np.ceil(local / (accum + 1) - EPS)
        valid = (self.min_local <= atomic) & (atomic <= self.max_local)
        if not valid.any():
            return self.fixed_config(replicas, lo)
        atomic = np.minimum(atomic, np.floor(self.max_batch / (replicas * (accum + 1))))
        step, sync = self._throughputs(placement, atomic)
        total = step + (step - sync) * accum
        batch = replicas * atomic * (accum + 1)
        e = min(epoch, self.max_epochs - 1)
        sqr = np.interp(batch, self._sizes, self._sqr[:, e])
        var = np.interp(batch, self._sizes, self._var[:, e])
        denom = var / (batch / self.init_batch) + sqr
        gain = np.where(denom > 0, (var + sqr) / np.where(denom > 0, denom, 1.0), 1.0)
        best = int(np.argmax(np.where(valid, gain / total, -np.inf)))
        return BatchConfig(int(atomic[best]), int(accum[best]), replicas)

    def epoch_of(self, progress: float) -> int:
        """The epoch a job with `progress` is in."""
        return min(self.max_epochs, bisect.bisect_right(self._ends, progress + EPS) - 1)


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
