"""The CPU's attention rate: causal SDPA forward and backward over a few shapes, and the demo's attention beside the
planner's figure for it.

The measured CPU's entry (hardware.cpu_accelerator) times attention at one shape, hardware.ATTENTION_PROBE, and the
planner runs every model's attention at that rate. The first table shows how far the rate moves with the shape; the
second sets the demo's attention (the `tiny` preset at its micro-batch of 16) beside what the planner says for it,
with the start-up timing and with the GPU default it had before (FLASH_EFFICIENCY of the GEMM rate).

    .venv/bin/python benchmarks/cpu_attention.py              # the process's default threads
    .venv/bin/python benchmarks/cpu_attention.py --threads 1

All timings in CPU time per thread (hardware.cpu_seconds), fp32: the shape table is hardware.attention_rate (what
the CPU's entry times at start-up) at each shape; the demo's forward and backward, the median of --repeats each.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys

import torch
import torch.nn.functional as F

from flopwise.hardware import ATTENTION_SECONDS, attention_rate, cpu_accelerator, cpu_seconds
from flopwise.models.config import get_preset
from flopwise.plan.cost import CostModel
from flopwise.plan.spec import Cluster, Training

SHAPES = ((2, 8, 256, 32), (4, 8, 256, 32), (16, 8, 256, 32), (32, 8, 256, 32), (4, 8, 256, 64), (4, 8, 512, 32))


def timed(work, repeats: int) -> float:
    work()
    times = []
    for _ in range(repeats):
        start = cpu_seconds()
        work()
        times.append(cpu_seconds() - start)
    return statistics.median(times)


def attention(batch: int, heads: int, seq: int, head_dim: int, repeats: int) -> tuple[float, float]:
    """(forward s, backward s) of causal SDPA with heads / 2 KV heads: the split the planner prices, which the
    start-up timing (fwd + bwd together) does not give."""
    q = torch.randn(batch, heads, seq, head_dim, requires_grad=True)
    k = torch.randn(batch, heads // 2, seq, head_dim, requires_grad=True)
    v = torch.randn(batch, heads // 2, seq, head_dim, requires_grad=True)
    grad = torch.randn(batch, heads, seq, head_dim)

    def forward():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    fwd = timed(forward, repeats)
    both = timed(lambda: torch.autograd.grad(forward(), (q, k, v), grad), repeats)
    return fwd, max(both - fwd, 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args(argv)
    if args.threads < 0 or args.repeats < 1:
        ap.error("--threads must be >= 0 and --repeats >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    acc = cpu_accelerator()
    print(f"threads {torch.get_num_threads()}, peak {acc.peak_flops / 1e12:.3f} TFLOP/s, GEMM efficiency "
          f"{acc.gemm_efficiency:.3f}, attention efficiency {acc.attention_efficiency:.3f}\n")
    print("| sequences x heads x tokens x head_dim | fwd + bwd TFLOP/s |")
    print("|---|---|")
    for batch, heads, seq, d in SHAPES:  # the start-up timing itself, at other shapes
        rate = attention_rate(ATTENTION_SECONDS, (batch, heads, heads // 2, seq, d))
        print(f"| {batch} x {heads} x {seq} x {d} | {rate / 1e12:.3f} |", flush=True)

    cfg = get_preset("tiny")
    training = Training(16, precision="fp32", seq_len=cfg.seq_len, software="flopwise")

    def planned(a) -> tuple[float, float]:
        return CostModel(cfg, Cluster(a, 1, 1), training).layer_compute(1, False, 16)["attention"]

    fwd, bwd = attention(16, cfg.heads, cfg.seq_len, cfg.head_dim, args.repeats)
    print(f"\nthe demo's attention, one layer, micro-batch 16: measured {1e3 * fwd:.1f} / {1e3 * bwd:.1f} ms fwd / bwd")
    for label, a in (("GPU default (0.7 of the GEMM rate)", dataclasses.replace(acc, attention_efficiency=0.0)),
                     ("start-up timing", acc)):
        pf, pb = planned(a)
        print(f"planned, {label}: {1e3 * pf:.1f} / {1e3 * pb:.1f} ms ({(pf + pb) / (fwd + bwd) - 1:+.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
