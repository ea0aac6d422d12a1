"""Model-state memory per GPU against the expert-parallel degree (issue 12).

1. yuan2-m32 (40B parameters, 32 experts) in the planner: weights, gradients and optimizer state per GPU
   (bf16 mixed precision, 16 bytes per parameter; ZeRO-1 over dp for the non-expert part, experts split by ep)
   for ep = 1 .. 32 on 32 GPUs, with pp = 1 and pp = 4 (the largest stage). Writes a PNG.
2. The planner's count against the trainer's tensors: `tiny-moe` cut to rank 0's experts by the same
   `keep_experts` the expert-parallel transform calls, its parameters counted and priced at fp32 AdamW's
   4 + 4 + 8 bytes, beside the planner's model_states for the same layout.
3. Measured (--measured): the real trainer's Engine on `tiny-moe` (fp32, gloo, CPU) in one process and under
   torchrun as EP2 (2 processes), EP2 x TP2 and EP2 x DP2 with ZeRO-1 and -3 (4 processes). Each rank takes two
   steps, then counts the bytes of its parameters, gradients and AdamW state (local tensors, after the
   second backward) and its peak RSS (getrusage), beside the planner's stage_memory for the same layout.

    .venv/bin/python benchmarks/moe_memory.py [--plot benchmarks/moe_memory.png] [--measured]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
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
# tiny-moe as the trainer runs it here: fp32, 8 sequences of 256 tokens per step, micro-batch 2
MEASURE_BASE = ["train.global_batch=8", "train.micro_batch=2", "guard.enabled=false", "train.eval_every=0"]
MEASURED = {  # name -> (processes, parallel overrides, Layout)
    "single": (1, [], Layout()),
    "EP2": (2, ["parallel.dp=2", "parallel.ep=2"], Layout(dp=2, ep=2)),
    "EP2 x TP2": (4, ["parallel.dp=2", "parallel.ep=2", "parallel.tp=2", "parallel.sp=false"],
                  Layout(dp=2, ep=2, tp=2, sp=False)),
    "EP2 x DP2, ZeRO-1": (4, ["parallel.dp=4", "parallel.ep=2", "parallel.zero=1"], Layout(dp=4, ep=2, zero=1)),
    "EP2 x DP2, ZeRO-3": (4, ["parallel.dp=4", "parallel.ep=2", "parallel.zero=3"], Layout(dp=4, ep=2, zero=3)),
}


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


def _bytes(t) -> int:
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def measure_rank(shards: str, overrides: list[str], out: str) -> None:
    """One rank (a torchrun worker, or the single process): two training steps of the Engine, then its
    tensors counted; writes rank<R>.json into `out`."""
    from flopwise.data.loader import TokenLoader
    from flopwise.data.shards import TokenShards
    from flopwise.train.config import load_config
    from flopwise.train.engine import build_engine

    torch.set_num_threads(1)
    job = load_config(None, [f'data.shards="{shards}"', *MEASURE_BASE, *overrides], preset="tiny-moe", out=out)
    engine = build_engine(job)
    loader = TokenLoader(TokenShards(shards), job.seq_len, job.train.global_batch, 0, engine.data_rank,
                         engine.data_world)
    inputs, targets = loader.next_batch()
    engine.forward_backward(inputs, targets)
    engine.clip_and_step(1e-4)  # the first step creates the AdamW state
    engine.forward_backward(inputs, targets)  # gradients of the second step, alive beside everything else
    params = [p for _, p in engine.named]
    result = {
        "params": sum(_bytes(p) for p in params),
        "grads": sum(_bytes(p.grad) for p in params if p.grad is not None),
        "optimizer": sum(_bytes(v) for st in engine.optimizer.state.values() for v in st.values()
                         if torch.is_tensor(v) and v.dim()),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
    }
    engine.clip_and_step(1e-4)
    rank = int(os.environ.get("RANK", "0"))
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def planned(layout: Layout) -> dict[str, float]:
    cfg = get_preset("tiny-moe")
    cm = CostModel(cfg, Cluster(get_accelerator("A100-80GB"), layout.gpus), Training(8, precision="fp32"))
    m = 8 // layout.dp // 2
    return cm.stage_memory(layout.replace(micro_batch=2), 0, cfg.layers, m)


def measured_table() -> list[dict]:
    """Runs every MEASURED layout: the single process here in a subprocess (its own RSS), the others under
    torchrun, all on gloo with one thread per process."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_shards

    shards = make_shards(Path(tempfile.mkdtemp()), vocab_size=get_preset("tiny-moe").vocab_size, docs=400)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    for name, (world, overrides, layout) in MEASURED.items():
        out = tempfile.mkdtemp(prefix="moe-mem-")
        me = [str(Path(__file__).resolve()), "--rank", str(shards), out, *overrides]
        if world == 1:
            cmd = [sys.executable, *me]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
                   "--master-port", str(_free_port()), *me]
        subprocess.run(cmd, check=True, env=env)
        plan = planned(layout)
        for r in range(world):
            got = json.loads(Path(out, f"rank{r}.json").read_text())
            rows.append({"layout": name, "rank": r, **got, **{f"plan_{k}": plan[k] for k in (*STATES, "activations")}})
    return rows


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def print_measured(rows: list[dict]) -> None:
    mib = 2**20
    single = next(r for r in rows if r["layout"] == "single")
    print("\n| layout | rank | params MiB | grads MiB | optimizer MiB | states MiB (vs single) | planner states MiB "
          "| peak RSS MiB (vs single) |")
    print("|---|---|---|---|---|---|---|---|")
    base = sum(single[k] for k in STATES)
    for r in rows:
        states = sum(r[k] for k in STATES)
        plan = sum(r[f"plan_{k}"] for k in STATES)
        print(f"| {r['layout']} | {r['rank']} | {r['params'] / mib:.2f} | {r['grads'] / mib:.2f} "
              f"| {r['optimizer'] / mib:.2f} | {states / mib:.2f} ({states / base:.0%}) | {plan / mib:.2f} "
              f"| {r['peak_rss'] / mib:.0f} ({r['peak_rss'] / single['peak_rss']:.0%}) |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--rank":  # a worker of measured_table
        measure_rank(sys.argv[2], sys.argv[4:], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plot", default="benchmarks/moe_memory.png")
    ap.add_argument("--measured", action="store_true", help="also run the trainer: 1, 2 and 4 gloo processes")
    ap.add_argument("--json", default=None, help="write the measured rows here")
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
    if args.measured:
        measured = measured_table()
        print_measured(measured)
        if args.json:
            Path(args.json).write_text(json.dumps(measured, indent=2))


if __name__ == "__main__":
    main()
