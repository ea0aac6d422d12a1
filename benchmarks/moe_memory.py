"""Model-state memory per GPU against the expert-parallel degree (issue 12).

1. yuan2-m32 (40B parameters, 32 experts) in the planner: weights, gradients and optimizer state per GPU
   (bf16 mixed precision, 16 bytes per parameter; ZeRO-1 over dp for the non-expert part, experts split by ep)
   for ep = 1 .. 32 on 32 GPUs, with pp = 1 and pp = 4 (the largest stage). Writes a PNG.
2. The planner's count against the trainer's tensors: `tiny-moe` cut to rank 0's experts by the same
   `keep_experts` the expert-parallel transform calls, its parameters counted and priced at fp32 AdamW's
   4 + 4 + 8 bytes, beside the planner's model_states for the same layout.

    .venv/bin/python benchmarks/moe_memory.py [--plot benchmarks/moe_memory.png]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from flopwise.hardware import get_accelerator
from flopwise.layout import Layout
from flopwise.models import get_preset
from flopwise.models.moe import LocalDispatcher, moe_layers
from flopwise.plan.cost import CostModel
from flopwise.plan.spec import Cluster, Training
from flopwise.train.engine import build_model

STATES = ("params", "grads", "optimizer")


def planner_table(gpus: int = 32) -> list[dict]:
    cfg = get_preset("yuan2-m32")
    cm = CostModel(cfg, Cluster(get_accelerator("A100-80GB"), gpus), Training(256))
    rows = []
    for pp in (1, 4):
        dp = gpus // pp
        split = [cfg.layers // pp] * pp
        for ep in (1, 2, 4, 8, 16, 32):
            if dp % ep:
                continue
            layout = Layout(dp=dp, pp=pp, zero=1, ep=ep, micro_batch=1)
            stages = [cm.stage_memory(layout, i, n, 8) for i, n in enumerate(split)]
            worst = max(stages, key=lambda s: sum(s[k] for k in STATES))
            rows.append({"pp": pp, "dp": dp, "ep": ep, **{k: worst[k] / 1e9 for k in STATES},
                         "states_gb": sum(worst[k] for k in STATES) / 1e9})
    return rows


def trainer_vs_planner() -> list[dict]:
    cfg = get_preset("tiny-moe")
    cm = CostModel(cfg, Cluster(get_accelerator("A100-80GB"), 8), Training(8, precision="fp32"))
    rows = []
    for ep in (1, 2, 4, 8):
        model = build_model(cfg, 0)
        per = cfg.experts // ep
        for _, layer in moe_layers(model):  # rank 0 of the ep group keeps experts [0, E / ep)
            layer.keep_experts(0, per, LocalDispatcher())
        params = sum(p.numel() for p in model.parameters())
        counted = params * (4 + 4 + 8) / 1e6  # fp32 weights and gradients, AdamW exp_avg and exp_avg_sq
        layout = Layout(dp=8, ep=ep)
        planned = sum(cm.stage_memory(layout, 0, cfg.layers, 1)[k] for k in STATES) / 1e6
        rows.append({"ep": ep, "params": params, "trainer_mb": counted, "planner_mb": planned})
    return rows


def plot(rows: list[dict], dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for pp in sorted({r["pp"] for r in rows}):
        sel = [r for r in rows if r["pp"] == pp]
        ax.plot([r["ep"] for r in sel], [r["states_gb"] for r in sel], marker="o", label=f"pp={pp}, dp={sel[0]['dp']}")
    ax.axhline(80, color="grey", linestyle="--", label="A100-80GB")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("expert-parallel degree ep")
    ax.set_ylabel("weights + grads + optimizer per GPU (GB)")
    ax.set_title("yuan2-m32 on 32 GPUs, bf16, ZeRO-1 (planner)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(dest)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plot", default="benchmarks/moe_memory.png")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    rows = planner_table()
    print("| pp | dp | ep | weights GB | grads GB | optimizer GB | total GB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pp']} | {r['dp']} | {r['ep']} | {r['params']:.1f} | {r['grads']:.1f} | {r['optimizer']:.1f} "
              f"| {r['states_gb']:.1f} |")
    print("\n| ep | parameters on rank 0 | trainer: x 16 B (MB) | planner (MB) |")
    print("|---|---|---|---|")
    for r in trainer_vs_planner():
        print(f"| {r['ep']} | {r['params']:,} | {r['trainer_mb']:.2f} | {r['planner_mb']:.2f} |")
    plot(rows, Path(args.plot))
    print("wrote", args.plot)


if __name__ == "__main__":
    main()
