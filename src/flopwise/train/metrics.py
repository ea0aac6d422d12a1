"""Metrics written as JSON lines (one object per logged step) and the loss plot.

A line is appended whole and flushed; a run killed mid-write (or a full disk) can still leave a torn last
line, so readers skip lines that do not parse, and a resume rewrites the file without them."""

from __future__ import annotations

import json
from pathlib import Path

from flopwise.atomic import atomic_path
from flopwise.errors import FlopwiseError


def read_records(path: str | Path) -> tuple[list[dict], int]:
    """The records of a metrics file and how many lines were torn or unreadable (skipped)."""
    records, bad = [], 0
    for line in Path(path).read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad += 1
    return records, bad


class MetricsWriter:
    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None

    def truncate_after(self, step: int) -> int:
        """On resume, drop records logged after the checkpoint we resume from (they will be redone) and any
        torn line; returns how many torn lines were dropped."""
        if self.path is None or not self.path.is_file():
            return 0
        records, bad = read_records(self.path)
        kept = [r for r in records if isinstance(r.get("step", 0), int) and r.get("step", 0) <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        return bad

    def start(self) -> None:
        """A run that starts at step 0 starts its own file: records of an earlier attempt that never checkpointed
        (or of another run given the same --metrics) would repeat its steps."""
        if self.path is not None and self.path.is_file():
            with atomic_path(self.path) as tmp:
                tmp.write_text("")

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise FlopwiseError(f"cannot write metrics to {self.path}: {exc.strerror or exc}") from None


def plot_losses(metrics_path: str | Path, dest: str | Path, title: str = "") -> Path | None:
    """PNG of training loss per step and held-out loss where evaluated."""
    metrics_path = Path(metrics_path)
    if not metrics_path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = [], []
    for rec in read_records(metrics_path)[0]:
        if "loss" in rec:
            train.append((rec["step"], rec["loss"]))
        if rec.get("eval_loss") is not None:
            evals.append((rec["step"], rec["eval_loss"]))
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(*zip(*train, strict=True), label="train loss", lw=1.2)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="held-out loss", lw=1.2, ms=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return dest
