"""Mixture of experts on this machine: throughput against a dense model with the same active parameters,
and expert load balance over a short run on the demo corpus.

1. Throughput. `tiny-moe` (8 experts of 384, top-2, attention router) against `tiny` (dense FFN 768 = 2 x 384):
   the same active parameters but for the router. Each step is the trainer's own: the Engine
   forward/backward (auxiliary losses included) and clip + AdamW step, on the same demo-corpus batches;
   the models alternate in rounds so machine noise hits both alike; the ratio is the figure to quote.
   Wall time and process CPU time are both recorded: on a busy shared machine, run with --threads 1 and
   quote the CPU-time ratio (a single thread's CPU time is its work, whoever else runs).
   Also times the expert GEMMs alone: the per-expert loop the layer uses against torch's grouped_mm.
2. Load balance. `tiny-moe` trains --steps steps from scratch (attention router, then the linear router),
   counting the assignments each expert receives; writes a PNG (tokens per expert per layer, and the
   busiest expert's load over the mean per step) and prints the numbers.

    .venv/bin/python benchmarks/moe.py                    # both parts, ~10 min on 2 busy CPU cores
    .venv/bin/python benchmarks/moe.py --steps 20 --rounds 2 --timed 2   # quicker
    .venv/bin/python benchmarks/moe.py --parts balance    # only the load-balance run and its plot
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from flopwise.data.loader import TokenLoader
from flopwise.data.shards import TokenShards
from flopwise.flops import model_flops_per_token, param_counts
from flopwise.hardware import detect
from flopwise.models import get_preset
from flopwise.models.moe import GroupedExperts, expert_load, moe_metrics
from flopwise.train.config import load_config
from flopwise.train.engine import Engine
from flopwise.train.schedule import lr_at
from flopwise.train.trainer import resolve_shards


def _engine(preset: str, args, **model) -> Engine:
    sets = [f"train.global_batch={args.batch}", f"train.micro_batch={args.batch}", f"train.seq_len={args.seq}",
            "train.device=cpu", "train.lr=2e-3"] + [f"model.{k}={json.dumps(v)}" for k, v in model.items()]
    return Engine(load_config(None, sets, preset=preset))


def throughput(args, shards: TokenShards, peak: float) -> list[dict]:
    names = ["tiny-moe", "tiny"]
    engines = {n: _engine(n, args) for n in names}
    loader = TokenLoader(shards, args.seq, args.batch, seed=0, rank=0, world=1)
    batches = [loader.next_batch() for _ in range(args.timed)]
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(args.rounds + 1):  # round 0 warms up
        for name in names:
            eng = engines[name]
            for x, y in batches:
                start, start_cpu = time.perf_counter(), time.process_time()
                eng.forward_backward(x, y, shards.eod_id)
                eng.clip_and_step(2e-3)
                if rnd:
                    times[name].append(time.perf_counter() - start)
                    cpu[name].append(time.process_time() - start_cpu)
        moe_metrics(engines["tiny-moe"].model)  # drop the counts
    rows = []
    for name in names:
        cfg = get_preset(name)
        step = statistics.median(times[name])
        tokens = args.batch * args.seq
        tps = tokens / step
        counts = param_counts(cfg)
        rows.append({"model": name, "params": counts.total, "active_params": counts.active, "step_s": round(step, 4),
                     "tokens_per_s": round(tps, 1), "tokens_per_cpu_s": round(tokens / statistics.median(cpu[name]), 1),
                     "mfu": round(tps * model_flops_per_token(cfg, args.seq) / peak, 4)})
    per = args.timed  # the ratio within each round: how much the machine's noise moves it
    ratios = [statistics.median(times["tiny"][i:i + per]) / statistics.median(times["tiny-moe"][i:i + per])
              for i in range(0, len(times["tiny"]), per)]
    cpu_ratios = [statistics.median(cpu["tiny"][i:i + per]) / statistics.median(cpu["tiny-moe"][i:i + per])
                  for i in range(0, len(cpu["tiny"]), per)]
    for row in rows:
        row["vs_dense"] = round(row["tokens_per_s"] / rows[-1]["tokens_per_s"], 3)
        row["vs_dense_cpu_time"] = round(row["tokens_per_cpu_s"] / rows[-1]["tokens_per_cpu_s"], 3)
    rows[0]["vs_dense_per_round"] = [round(r, 3) for r in ratios]
    rows[0]["vs_dense_cpu_time_per_round"] = [round(r, 3) for r in cpu_ratios]
    return rows


def expert_gemms(args) -> dict:
    """The experts alone (forward + backward) on tiny-moe's shape with a random routing: loop vs grouped_mm."""
    cfg = get_preset("tiny-moe")
    rows = args.batch * args.seq * cfg.top_k
    ex = GroupedExperts(cfg.experts, cfg.hidden, cfg.ffn)
    ex.reset_parameters(0.02, 0.01)
    x = torch.randn(rows, cfg.hidden, requires_grad=True)
    grad = torch.randn(rows, cfg.hidden)
    counts = torch.multinomial(torch.ones(cfg.experts), rows, replacement=True).bincount(minlength=cfg.experts)
    offs = counts.cumsum(0).to(torch.int32)

    def grouped():
        up = F.grouped_mm(x, ex.w1.transpose(1, 2), offs=offs)
        gate = F.grouped_mm(x, ex.w3.transpose(1, 2), offs=offs)
        return F.grouped_mm(F.silu(up) * gate, ex.w2.transpose(1, 2), offs=offs)

    fns = {"loop": lambda: ex(x, counts.tolist())}
    if hasattr(F, "grouped_mm"):
        fns["grouped_mm"] = grouped
    best = {}
    for _ in range(args.rounds * args.timed + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            (fn() * grad).sum().backward()
            best.setdefault(name, []).append(time.perf_counter() - start)
    return {name: round(statistics.median(t[1:]), 4) for name, t in best.items()}


def load_balance(args, shards: TokenShards, router: str) -> dict:
    torch.manual_seed(0)
    eng = _engine("tiny-moe", args, router=router)
    loader = TokenLoader(shards, args.seq, args.batch, seed=0, rank=0, world=1)
    total: dict[str, list[float]] = {}
    max_load, balance, losses = [], [], []
    for step in range(args.steps):
        x, y = loader.next_batch()
        losses.append(eng.forward_backward(x, y, shards.eod_id))
        eng.clip_and_step(lr_at(step, lr=2e-3, min_lr=2e-4, warmup=10, total=args.steps))
        for name, counts in expert_load(eng.model).items():
            total[name] = [a + b for a, b in zip(total.get(name, [0.0] * len(counts)), counts, strict=True)]
        metrics = moe_metrics(eng.model)  # reads and resets the counts
        max_load.append(metrics["moe_max_load"])
        balance.append(metrics["moe_balance_loss"])
    return {"router": router, "tokens_per_expert": total, "max_load_per_step": max_load,
            "balance_loss_per_step": balance, "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4)}


def plot(runs: list[dict], dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs) + 1, figsize=(5 * (len(runs) + 1), 4), dpi=110)
    for ax, run in zip(axes, runs, strict=False):
        layers = run["tokens_per_expert"]
        experts = len(next(iter(layers.values())))
        width = 0.8 / len(layers)
        for i, (name, counts) in enumerate(layers.items()):
            share = [c / sum(counts) * experts for c in counts]
            ax.bar([e + i * width for e in range(experts)], share, width, label=name.split(".")[1])
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks([e + 0.4 - width / 2 for e in range(experts)], [str(e) for e in range(experts)])
        ax.set_xlabel("expert")
        ax.set_ylabel("assignments / mean (whole run)")
        ax.set_title(f"{run['router']} router: tokens per expert")
        ax.legend(title="layer", fontsize=7)
    ax = axes[-1]
    for run in runs:
        ax.plot(range(1, len(run["max_load_per_step"]) + 1), run["max_load_per_step"], label=f"{run['router']} router")
    ax.set_xlabel("step")
    ax.set_ylabel("busiest expert / mean (mean over layers)")
    ax.set_title("load imbalance per step")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dest)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--timed", type=int, default=3, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60, help="training steps of the load-balance run")
    ap.add_argument("--plot", default="benchmarks/moe_expert_load.png")
    ap.add_argument("--json", default=None, help="write all results to this file")
    ap.add_argument("--parts", default="throughput,balance", help="comma-separated: throughput, balance")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default); 1 makes CPU time a measure of work on a shared machine")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    torch.manual_seed(0)
    acc = detect(torch.device("cpu"))
    shards = TokenShards(resolve_shards(load_config(None, [], preset="tiny-moe")), "train")

    result = {"device": f"{platform.machine()} CPU, {torch.get_num_threads()} threads", "peak_flops": acc.peak_flops,
              "torch": torch.__version__, "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d"), "args": vars(args)}
    if "throughput" in parts:
        result["throughput"] = throughput(args, shards, acc.peak_flops)
        for row in result["throughput"]:
            print(json.dumps(row))
        result["expert_gemms_s"] = expert_gemms(args)
        print("expert GEMMs (fwd+bwd, median s):", json.dumps(result["expert_gemms_s"]))
    if "balance" in parts:
        result["load_balance"] = balance_part(args, shards)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


def balance_part(args, shards: TokenShards) -> list[dict]:
    runs = [load_balance(args, shards, router) for router in ("attention", "linear")]
    for run in runs:
        for name, counts in run["tokens_per_expert"].items():
            mean = sum(counts) / len(counts)
            print(run["router"], name, "max/mean", round(max(counts) / mean, 3), "min/mean", round(min(counts) / mean, 3),
                  [int(c) for c in counts])
        print(run["router"], "loss", run["loss_first"], "->", run["loss_last"], "max load first/last 10 steps",
              round(statistics.mean(run["max_load_per_step"][:10]), 3),
              round(statistics.mean(run["max_load_per_step"][-10:]), 3), "balance loss first/last 10 steps",
              round(statistics.mean(run["balance_loss_per_step"][:10]), 4),
              round(statistics.mean(run["balance_loss_per_step"][-10:]), 4))
    plot(runs, Path(args.plot))
    print("wrote", args.plot)
    return runs


if __name__ == "__main__":
    main()
