"""The cost model's compute terms, measured on the GPU at hand beside what the planner predicts for them.

The planner prices a layer from a few device facts (hardware.py: the dense peak, gemm_efficiency, HBM bandwidth,
memory_efficiency) and a few constants (plan/cost.py: the attention kernels' rates, the backward's efficiency,
FP8's rate). Published runs only show whole steps; this times the pieces on one GPU, each against the planner's
own figure for the same shape:

- `gemm`: a large square bf16 GEMM in a burst and a device-to-device copy (memory_efficiency); `sustained` (not in
  the default sections): the same GEMM for a minute, window by window, with clocks and power: gemm_efficiency stands
  for the rate a training run sustains at the power cap, not for a burst; `sustained_block` (not in the default
  sections either): a model's block GEMMs at TP 8 and 1 (--block-models, --block-tps), bf16 and FP8, half that time each;
- `block`: every weight GEMM of a Llama block at tensor-parallel widths 1-8, forward (x W^T), dgrad (dy W) and
  wgrad (dy^T x), bf16 and FP8 (torch._scaled_mm, per-tensor scales, e4m3 operands);
- `attention`: causal grouped-query SDPA, FlashAttention-2 and cuDNN backends, forward and backward;
- `layer`: flopwise's own transformer block (bf16 autocast, as the trainer runs it), forward and backward;
- `step`: flopwise's model at the same width with a few layers: forward, fp32 cross-entropy, backward, AdamW; on a
  GPU the layers' kernel time by kind (GEMM, attention, the rest) beside the planner's split; `--presets` and
  `--widths` add whole presets and Llama-style models of other widths, `--step-compile` compiles the blocks.

    python benchmarks/planner_kernels.py --json out.json            # GPU: Llama-3 8B / 70B shapes
    python benchmarks/planner_kernels.py --quick                    # CPU smoke run: tiny shapes, few repeats

Each timing runs a kernel `--inner` times back to back (10), as a training loop queues them; `fwd_single_s` keeps
one call per timing for comparison. Figures from one H200: benchmarks/RESULTS.md, "Kernels on an H200" and the
"Second" and "Third H200 lease".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flopwise.flops import FLASH_BACKWARD_FLOPS, block_gemms, causal_attention_flops  # noqa: E402
from flopwise.hardware import detect  # noqa: E402
from flopwise.layout import Layout  # noqa: E402
from flopwise.models import Transformer  # noqa: E402
from flopwise.models.config import ModelConfig, get_preset  # noqa: E402
from flopwise.models.rope import rope_table  # noqa: E402
from flopwise.models.transformer import Block  # noqa: E402
from flopwise.plan.cost import CostModel  # noqa: E402
from flopwise.plan.spec import Cluster, Training  # noqa: E402
from flopwise.train.engine import fused_adamw  # noqa: E402

# Llama 3 shapes (Llama Team 2024, table 3): 8B h 4096, 32 heads / 8 KV, FFN 14336; 70B h 8192, 64 / 8, FFN 28672
SHAPES = {
    "llama3-8b": ModelConfig(128256, 32, 4096, 32, 8, 14336, 8192, lfa=False, rope_base=500000.0,
                             tie_embeddings=False),
    "llama3-70b": ModelConfig(128256, 80, 8192, 64, 8, 28672, 8192, lfa=False, rope_base=500000.0,
                              tie_embeddings=False),
}
QUICK = ModelConfig(2048, 2, 256, 8, 4, 512, 256, lfa=False, tie_embeddings=False)


class Timer:
    """Median seconds of a callable over `repeats` timings after `warmup` runs (CUDA events on a GPU). Each
    timing runs it `inner` times back to back and divides: kernels queued behind each other, as a training loop
    issues them, hide their launch; one call between two events does not."""

    def __init__(self, device: torch.device, repeats: int, warmup: int, inner: int = 1) -> None:
        self.device, self.repeats, self.warmup, self.inner = device, repeats, warmup, inner

    def __call__(self, fn, inner: int | None = None) -> float:
        inner = inner or self.inner
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.repeats):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(inner):
                    fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3 / inner)
            else:
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                times.append((time.perf_counter() - t0) / inner)
        return statistics.median(times)


def cost_model(cfg: ModelConfig, acc, software: str, seq: int, precision: str = "bf16") -> CostModel:
    """The planner for one GPU running `cfg` at sequence `seq` with `software`'s profile."""
    return CostModel(cfg, Cluster(acc, gpus=1), Training(global_batch=1, seq_len=seq, software=software,
                                                         precision=precision))


def fp8_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def bench_gemm(timer, device, dtype, acc, quick: bool) -> dict:
    n = 1024 if quick else 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sec = timer(lambda: a @ b)
    rate = 2 * n**3 / sec
    big = torch.empty(2**26 if quick else 2**30, device=device, dtype=torch.float32)  # 4 GiB on a GPU
    dst = torch.empty_like(big)
    copy = timer(lambda: dst.copy_(big))
    bw = 2 * big.numel() * 4 / copy
    return {"square_n": n, "gemm_tflops": rate / 1e12, "gemm_fraction_of_peak": rate / acc.peak_flops if
            acc.peak_flops else None, "planner_gemm_efficiency": acc.gemm_efficiency,
            "copy_gbps": bw / 1e9, "copy_fraction_of_hbm": bw / acc.memory_bandwidth if acc.memory_bandwidth else None,
            "planner_memory_efficiency": acc.memory_efficiency}


def _hold(fn, device, seconds: float, window: float, batch: int) -> tuple[list[float], list[str]]:
    """`fn` back to back for `seconds`, `batch` calls between synchronisations: seconds per call in each window of
    about `window` s, and nvidia-smi's clock and power at the start, every 5 windows and the end. Kernel benchmarks
    run for milliseconds; a training run holds the GPU at its power limit for hours, where the clocks settle lower."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    for _ in range(batch):  # warm up: cuBLAS's first calls and the clocks' ramp stay out of the first window
        fn()
    sync(device)
    per_call, smi = [], [_smi()]
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0, count = time.perf_counter(), 0
        while time.perf_counter() - t0 < window:
            for _ in range(batch):
                fn()
            count += batch
            sync(device)
        per_call.append((time.perf_counter() - t0) / count)
        if len(per_call) % 5 == 0:
            smi.append(_smi())
    smi.append(_smi())
    return per_call, smi


def bench_sustained(device, dtype, seconds: float, quick: bool) -> dict:
    """The 8192^3 GEMM held for `seconds`: its rate per window of about 2 s, with clocks and power (_hold)."""
    n = 1024 if quick else 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    per_call, smi = _hold(lambda: torch.mm(a, b, out=c), device, seconds, 0.2 if quick else 2.0, 20)
    windows = [2 * n**3 / sec / 1e12 for sec in per_call]
    return {"n": n, "seconds": seconds, "window_tflops": windows, "smi": smi,
            "first_tflops": windows[0], "last_tflops": windows[-1], "min_tflops": min(windows)}


def _gemm_passes(tokens: int, k: int, n: int, device, dtype, fp8: bool) -> dict:
    """One weight GEMM's three passes as a training step runs them, on random operands: forward x W^T, dgrad dy W,
    wgrad dy^T x; with fp8 also their FP8 forms (torch._scaled_mm, per-tensor scales, e4m3 operands; the backward
    without fast accumulation, as Transformer Engine and torchao run it)."""
    x = torch.randn(tokens, k, device=device, dtype=dtype)
    w = torch.randn(n, k, device=device, dtype=dtype)
    dy = torch.randn(tokens, n, device=device, dtype=dtype)
    passes = {"fwd": lambda: x @ w.t(), "dgrad": lambda: dy @ w, "wgrad": lambda: dy.t() @ x}
    if fp8:
        e4, one = torch.float8_e4m3fn, torch.ones((), device=device, dtype=torch.float32)
        x8, w8, dy8 = x.to(e4), w.to(e4), dy.to(e4)  # [m,k] x [k,n]: w8.t() is column-major
        wt8, dyt8, xt8 = w.t().contiguous().to(e4), dy.t().contiguous().to(e4), x.t().contiguous().to(e4)
        passes.update({"fp8_fwd": lambda: _scaled_mm(x8, w8.t(), one),
                       "fp8_dgrad": lambda: _scaled_mm(dy8, wt8.t(), one, fast_accum=False),
                       "fp8_wgrad": lambda: _scaled_mm(dyt8, xt8.t(), one, fast_accum=False)})
    return passes


def bench_sustained_block(device, dtype, acc, cfg: ModelConfig, name: str, tokens: int, tp: int, fp8: bool,
                          seconds: float, quick: bool) -> dict:
    """Every weight GEMM of one block at TP `tp` (forward, dgrad, wgrad, each `count` times), held for `seconds`
    (_hold): the block's time per 2-s window, against the planner's figure. The square GEMM lost 14.5% at the
    power cap; this asks whether a block of smaller, skinnier GEMMs loses the same."""
    cm = cost_model(cfg, acc, "torch-compile", tokens, precision="fp8" if fp8 else "bf16")
    prefix = "fp8_" if fp8 else ""
    calls, planned = [], 0.0
    for g in block_gemms(cfg):
        k, n = (int(v) for v in cm._sharded(g, tp))
        passes = _gemm_passes(tokens, k, n, device, dtype, fp8)
        calls += [passes[prefix + p] for p in ("fwd", "dgrad", "wgrad")] * int(g.count)
        fwd = cm.gemm_time(tokens, k, n, low=fp8)
        planned += g.count * (fwd + 2 * fwd / cm.constants.backward_efficiency)

    def block():
        for fn in calls:
            fn()

    times, smi = _hold(block, device, seconds, 0.2 if quick else 2.0, 5)
    settled = statistics.median(times[1:]) if len(times) > 1 else times[0]
    return {"model": name, "tp": tp, "precision": "fp8" if fp8 else "bf16", "seconds": seconds,
            "window_block_s": times, "first_window_s": times[0], "settled_s": settled,
            "pred_block_s": planned, "planner_over_settled": planned / settled, "smi": smi}


def _commit() -> str:
    """The checkout's commit, so a result file names the script version that wrote it ('' outside git)."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _smi() -> str:
    """SM clock, power draw and temperature from nvidia-smi ('' where there is none)."""
    import subprocess

    try:
        query = "--query-gpu=clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active"
        return subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _scaled_mm(a8, b8_colmajor, one, fast_accum: bool = True):
    """FP8 GEMM with per-tensor scales. Transformer Engine and torchao accumulate fast in the forward and in full
    precision for the backward's gradients: the forward passes fast_accum=True, dgrad and wgrad False."""
    return torch._scaled_mm(a8, b8_colmajor, scale_a=one, scale_b=one, out_dtype=torch.bfloat16,
                            use_fast_accum=fast_accum)


def bench_block(timer, device, dtype, acc, cfg: ModelConfig, name: str, tokens: int, tps, fp8: bool) -> list[dict]:
    """Each block GEMM at each TP width: measured forward, dgrad, wgrad (and FP8) against the planner."""
    rows = []
    cm = cost_model(cfg, acc, "torch-compile", tokens)
    cm8 = cost_model(cfg, acc, "torch-compile", tokens, precision="fp8") if fp8 else None
    for tp in tps:
        for g in block_gemms(cfg):
            k, n = (int(v) for v in cm._sharded(g, tp))
            passes = _gemm_passes(tokens, k, n, device, dtype, fp8)
            row = {"model": name, "tp": tp, "gemm": g.name, "count": g.count, "m": tokens, "k": k, "n": n,
                   **{f"{p}_s": timer(fn) for p, fn in passes.items()},
                   "fwd_single_s": timer(passes["fwd"], inner=1),
                   "pred_fwd_s": cm.gemm_time(tokens, k, n),
                   "pred_bwd_s": 2 * cm.gemm_time(tokens, k, n) / cm.constants.backward_efficiency}
            if fp8:
                row["pred_fp8_fwd_s"] = cm8.gemm_time(tokens, k, n, low=True)
                row["pred_fp8_bwd_s"] = 2 * cm8.gemm_time(tokens, k, n, low=True) / cm8.constants.backward_efficiency
            rows.append(row)
    return rows


def bench_attention(timer, device, dtype, acc, cfg: ModelConfig, name: str, seqs, tps) -> list[dict]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash (FA2)": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    if device.type != "cuda":
        backends = {"math": SDPBackend.MATH}
    rows = []
    for seq in seqs:
        for tp in tps:
            heads, kv = cfg.heads // tp, max(1, cfg.kv_heads // tp)
            d = cfg.head_dim
            q = torch.randn(1, heads, seq, d, device=device, dtype=dtype, requires_grad=True)
            k = torch.randn(1, kv, seq, d, device=device, dtype=dtype, requires_grad=True)
            v = torch.randn(1, kv, seq, d, device=device, dtype=dtype, requires_grad=True)
            grad = torch.randn(1, heads, seq, d, device=device, dtype=dtype)
            flops_fwd = causal_attention_flops(seq, d, heads, 1)
            for label, backend in backends.items():
                row = {"model": name, "seq": seq, "tp": tp, "backend": label, "heads": heads, "kv_heads": kv}
                try:
                    with sdpa_kernel(backend):
                        def fwd(q=q, k=k, v=v, gqa=kv != heads):
                            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

                        def fwd_bwd(fwd=fwd, grad=grad, inputs=(q, k, v)):
                            torch.autograd.grad(fwd(), inputs, grad)  # no accumulation into .grad

                        row["fwd_s"] = timer(fwd)
                        row["bwd_s"] = max(0.0, timer(fwd_bwd) - row["fwd_s"])
                    row["fwd_tflops"] = flops_fwd / row["fwd_s"] / 1e12
                    row["bwd_tflops"] = FLASH_BACKWARD_FLOPS * flops_fwd / max(row["bwd_s"], 1e-12) / 1e12
                except Exception as exc:  # a backend that refuses the shape (GQA, head_dim) is reported, not fatal
                    row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                for software in ("torch-eager", "te"):  # FA2 class and FA3 / cuDNN class
                    cm = cost_model(cfg, acc, software, seq)
                    attn = cm.attention_time(tp, 1)
                    row[f"pred_fwd_s[{software}]"] = attn
                    row[f"pred_bwd_s[{software}]"] = cm.layer_compute(tp, False, 1)["attention"][1]
                rows.append(row)
    return rows


def llama_width(hidden: int) -> ModelConfig:
    """A Llama-style model of this width: head dim 128 (64 under 1024), multi-head, SwiGLU FFN 8/3 h rounded to 256."""
    heads = max(1, hidden // (128 if hidden >= 1024 else 64))
    return get_preset("llama-1b").replace(hidden=hidden, heads=heads, kv_heads=heads,
                                          ffn=max(256, round(hidden * 8 / 3 / 256) * 256))


def _autocast(device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bench_layer(timer, device, acc, cfg: ModelConfig, name: str, seq: int, compiled: bool) -> dict:
    """flopwise's Block, fp32 master weights under bf16 autocast (the trainer's GPU default), micro-batch 1."""
    block = Block(cfg).to(device)
    cos, sin = rope_table(cfg.head_dim, seq, cfg.rope_base, device=device)
    cos, sin = cos[:seq].unsqueeze(0), sin[:seq].unsqueeze(0)
    x = torch.randn(1, seq, cfg.hidden, device=device, requires_grad=True)

    def fwd():
        with _autocast(device):
            return block(x, cos, sin)

    def fwd_bwd():  # gradients set afresh each call, as a step does, not accumulated
        block.zero_grad(set_to_none=True)
        x.grad = None
        fwd().float().sum().backward()

    row = {"model": name, "seq": seq, "fwd_s": timer(fwd)}
    row["bwd_s"] = max(0.0, timer(fwd_bwd) - row["fwd_s"])
    if compiled:  # the same block through torch.compile: Inductor fuses the elementwise chains
        eager, block = block, torch.compile(block)
        try:
            row["compiled_fwd_s"] = timer(fwd)
            row["compiled_bwd_s"] = max(0.0, timer(fwd_bwd) - row["compiled_fwd_s"])
        except Exception as exc:
            row["compiled_error"] = f"{type(exc).__name__}: {exc}"[:300]
        block = eager
    for software in ("flopwise", "torch-compile"):
        lc = cost_model(cfg, acc, software, seq).layer_cost(1, False, 1, "none")
        row[f"pred_fwd_s[{software}]"], row[f"pred_bwd_s[{software}]"] = lc.fwd, lc.bwd
    return row


# Kernel names by kind, the cost model's three (CostModel.layer_compute): cuBLAS / CUTLASS GEMMs (nvjet is cuBLAS's
# Hopper family; implicit-GEMM convolutions count as GEMMs), the attention core (FlashAttention, cuDNN's fused SDPA),
# and everything else (elementwise, norms, reductions, copies, the loss).
GEMM_KERNEL_MARKS = ("gemm", "nvjet", "xmma", "cutlass", "cublas", "splitk")
ATTENTION_KERNEL_MARKS = ("flash", "fmha", "sdpa", "attention")


def kernel_kind(name: str) -> str:
    n = name.lower()
    if any(m in n for m in ATTENTION_KERNEL_MARKS):
        return "attention"
    if any(m in n for m in GEMM_KERNEL_MARKS):
        return "gemm"
    return "elementwise"


def _gpu_kinds(fn, device, calls: int = 2, top: int = 0) -> dict | None:
    """Seconds per call the GPU spends in kernels (torch.profiler), in total and by kernel_kind, to set beside the
    call's wall time (where the two differ, the GPU waited on the host) and beside the planner's split; with `top`,
    also the `top` longest kernels (name, kind, seconds per call, calls per call)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize(device)
    kinds = {"gemm": 0.0, "attention": 0.0, "elementwise": 0.0}
    events = sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total)
    for e in events:
        kinds[kernel_kind(e.key)] += e.self_device_time_total / 1e6 / calls
    kinds["total"] = sum(kinds.values())
    if top:
        kinds["top"] = [(e.key[:160], kernel_kind(e.key), e.self_device_time_total / 1e6 / calls, e.count / calls)
                        for e in events[:top]]
    return kinds


def bench_step(timer, device, acc, cfg: ModelConfig, name: str, seq: int, layers: int, micro_batch: int = 1,
               compiled: bool = False, top: int = 0) -> dict:
    """flopwise's model with `layers` layers: forward, fp32 cross-entropy, backward, AdamW as the trainer builds it
    (fused on a GPU, foreach on a CPU: train/engine.py build_optimizer), and the foreach one beside it on a GPU.
    `compiled`: each block through torch.compile, as `train.compile = true` runs it (parallel/parallelize.py)."""
    cfg = cfg.replace(layers=layers, seq_len=seq)
    model = Transformer(cfg).to(device)
    if compiled:
        for block in model.layers.values():
            block.compile()
    fused = fused_adamw("auto", {device.type})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused, foreach=not fused)
    tokens = torch.randint(0, cfg.vocab_size, (micro_batch, seq), device=device)
    target = torch.randint(0, cfg.vocab_size, (micro_batch, seq), device=device)

    def step():
        with _autocast(device):
            logits = model(tokens)
        F.cross_entropy(logits.float().flatten(0, 1), target.flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        with _autocast(device):
            logits = model(tokens)
        F.cross_entropy(logits.float().flatten(0, 1), target.flatten()).backward()

    hidden = torch.randn(micro_batch, seq, cfg.hidden, device=device, requires_grad=True)

    def head_loss():  # final norm, LM head and fp32 cross-entropy, forward and backward
        model.zero_grad(set_to_none=True)
        hidden.grad = None
        with _autocast(device):
            logits = model.output(model.norm(hidden))
        F.cross_entropy(logits.float().flatten(0, 1), target.flatten()).backward()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    row = {"model": name + ("+compile" if compiled else ""), "layers": layers, "seq": seq, "micro_batch": micro_batch,
           "step_s": timer(step, inner=2)}
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    row["fwd_bwd_s"] = timer(fwd_bwd, inner=2)
    kinds = _gpu_kinds(fwd_bwd, device, top=top)
    row["fwd_bwd_gpu_busy_s"] = kinds and kinds["total"]
    if kinds and "top" in kinds:
        row["top_kernels"] = kinds.pop("top")
    row["optimizer_s"] = timer(opt.step, inner=2)  # the gradients of the last backward are in place
    if fused:
        foreach = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
        row["optimizer_foreach_s"] = timer(foreach.step, inner=2)
    row["head_loss_s"] = timer(head_loss, inner=2)
    head_kinds = _gpu_kinds(head_loss, device)  # after the optimizer's timings: head_loss drops the blocks' gradients
    if kinds and head_kinds:  # the layers' kernels by kind: the step's less the head's and the loss's, per layer
        row["layer_gpu_s"] = {k: (v - head_kinds[k]) / layers for k, v in kinds.items()}
    cm = CostModel(cfg, Cluster(acc, gpus=1), Training(global_batch=micro_batch, seq_len=seq, software="flopwise",
                                                        compiled=compiled))
    row["pred_head_loss_s"] = cm.head_time(1, micro_batch)[0]
    layer = cm.layer_cost(1, False, micro_batch, "none")
    row["pred_layer_fwd_bwd_s"] = layer.fwd + layer.bwd
    row["pred_layer_s"] = {k: f + b for k, (f, b) in cm.layer_compute(1, False, micro_batch).items()}
    if device.type == "cuda":
        row["cudnn"] = torch.backends.cudnn.version()
    plan = cm.evaluate(Layout(sp=False, micro_batch=micro_batch))
    row["pred_step_s"] = plan.step_time
    row["pred_peak_memory_gib"] = plan.peak_memory / 2**30
    row["pred_breakdown_s"] = plan.breakdown
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes and few repeats (a CPU smoke run)")
    ap.add_argument("--sections", default="gemm,block,attention,layer,step")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--inner", type=int, default=10, help="back-to-back calls per timing (see Timer)")
    ap.add_argument("--sustain-seconds", type=float, default=60.0, help="length of the sustained section")
    ap.add_argument("--block-models", nargs="*", default=None, help="sustained_block's models (the first shape)")
    ap.add_argument("--block-tps", default="8,1", help="sustained_block's TP widths")
    ap.add_argument("--presets", nargs="*", default=[], help="the step section also times these flopwise presets "
                    "whole, at --micro-batch (e.g. yuan-1b-llama)")
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--step-compile", action="store_true", help="the step section compiles each block (torch.compile)")
    ap.add_argument("--top-kernels", type=int, default=0, help="the step section keeps this many longest kernels")
    ap.add_argument("--widths", default="", help="the step section also times Llama-style models of these widths "
                    "(head dim 128, 64 under 1024; FFN 8/3 h; seq 2048, 4 layers, vocabulary 32000; e.g. "
                    "1024,2048,4096) at --micro-batch; GPU-sized, --quick does not shrink them")
    ap.add_argument("--json", default=None, help="write the results here (rewritten after each section)")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    acc = detect(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    timer = Timer(device, 3 if args.quick else args.repeats, 1 if args.quick else 3, inner=args.inner)
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "catalogue_entry": acc.name, "torch": torch.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dtype": str(dtype), "commit": _commit()}
    out = {"meta": meta}
    shapes = {"quick": QUICK} if args.quick else SHAPES
    seq = QUICK.seq_len if args.quick else 8192
    fp8 = fp8_supported(device)

    step_opts = {"compiled": args.step_compile, "top": args.top_kernels}

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))

    sections = {
        "gemm": lambda: bench_gemm(timer, device, dtype, acc, args.quick),
        "sustained": lambda: bench_sustained(device, dtype, args.sustain_seconds, args.quick),
        "block": lambda: [r for name, cfg in shapes.items()
                          for r in bench_block(timer, device, dtype, acc, cfg, name, seq,
                                               (1, 2) if args.quick else (1, 2, 4, 8), fp8)],
        "attention": lambda: [r for name, cfg in shapes.items()
                              for r in bench_attention(timer, device, dtype, acc, cfg, name,
                                                       (seq,) if args.quick else (4096, 8192),
                                                       (1, 2) if args.quick else (1, 2, 4, 8))],
        "sustained_block": lambda: [
            bench_sustained_block(device, dtype, acc, cfg, name, seq, tp, f8, args.sustain_seconds / 2, args.quick)
            for name, cfg in shapes.items() if name in (args.block_models or [next(iter(shapes))])
            for tp in map(int, args.block_tps.split(",")) for f8 in (False, True) if fp8 or not f8],
        "layer": lambda: [bench_layer(timer, device, acc, cfg, name, seq, device.type == "cuda")
                           for name, cfg in shapes.items()],
        "step": lambda: [bench_step(timer, device, acc, next(iter(shapes.values())), next(iter(shapes)), seq,
                                    2 if args.quick else 4, 1, **step_opts)] + [
            bench_step(timer, device, acc, get_preset(name), name, get_preset(name).seq_len, get_preset(name).layers,
                       args.micro_batch, **step_opts) for name in args.presets] + [
            bench_step(timer, device, acc, llama_width(w), f"llama-w{w}", 2048, 4, args.micro_batch, **step_opts)
            for w in (int(x) for x in args.widths.split(",") if x)],
    }
    print(json.dumps(meta), flush=True)
    for key in args.sections.split(","):
        t0 = time.perf_counter()
        try:
            out[key] = sections[key]()
        except Exception:
            out[key] = {"error": traceback.format_exc()[-2000:]}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"[{key}] {time.perf_counter() - t0:.1f}s", flush=True)
        print(json.dumps(out[key], default=float)[:6000], flush=True)
        save()


if __name__ == "__main__":
    main()
