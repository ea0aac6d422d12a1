"""Figures of a simulation: the JCT distribution (CDF) and GPU utilisation over time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flopwise.atomic import atomic_path
from flopwise.cluster.metrics import SimResult


def plot_results(results: dict[str, SimResult], path: str | Path, title: str = "") -> None:
    """One CDF of job completion times and one utilisation curve per labelled result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, result in results.items():
        jct = np.sort([j["jct_s"] for j in result.jobs if "jct_s" in j])
        if jct.size:
            ax1.plot(jct / 3600, np.arange(1, jct.size + 1) / jct.size, label=f"{label} (avg {jct.mean() / 3600:.2f} h)")
        cap = result.summary["capacity_gpus"] or 1
        if result.timeline:
            t = np.array([p[0] for p in result.timeline] + [result.summary["makespan_s"] + result.timeline[0][0]])
            used = np.array([p[1] for p in result.timeline] + [result.timeline[-1][1]]) / cap
            ax2.step(t / 3600, used, where="post", label=label, linewidth=0.8)
    ax1.set_xscale("log")
    ax1.set_xlabel("job completion time (hours, log)")
    ax1.set_ylabel("fraction of jobs")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.set_xlabel("time (hours)")
    ax2.set_ylabel("GPUs allocated (fraction)")
    ax2.set_ylim(0, 1.05)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
