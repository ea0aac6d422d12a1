"""Metrics written as JSON lines (one object per logged step) and the loss plot."""

from __future__ import annotations

import json
from pathlib import Path

from flopwise.atomic import atomic_path


class MetricsWriter:
    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None

    def truncate_after(self, step: int) -> None:
        """On resume, drop records logged after the checkpoint we resume from (they will be redone)."""
        if self.path is None or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def plot_losses(metrics_path: str | Path, dest: str | Path, title: str = "") -> Path | None:
    """PNG of training loss per step and held-out loss where evaluated."""
    metrics_path = Path(metrics_path)
    if not metrics_path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = [], []
    for line in metrics_path.read_text().splitlines():
        rec = json.loads(line)
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
