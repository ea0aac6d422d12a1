"""Host time per transformer block under the PyTorch-native wrappers: plain eager, DTensor tensor parallelism, FSDP2,
full activation recomputation, bf16 autocast, and their combinations, on this CPU.

The planner costs no kernel launches on a GPU: a block whose kernels take less time than the host needs to issue them
runs at the host's pace (track_record.small_block; FINDINGS.md section 31). What a block costs the host depends on
the stack, and this measures that part of it for the PyTorch-native wrappers torchtitan-style stacks use, on a
Llama-style block (RMSNorm, causal SDPA, SwiGLU) so narrow that its kernels take next to nothing: what is timed is
the dispatcher, autograd and the wrappers' Python, which a GPU host pays as well (plus its own launch calls, not here).
The collectives run on PyTorch's fake process group (they return at once) over a --world x --world mesh (FSDP over
the first dimension, TP over the second), so the world size costs nothing but the bookkeeping. One rank, one thread.

    .venv/bin/python benchmarks/host_per_block.py               # world size 8, 40 repeats
    .venv/bin/python benchmarks/host_per_block.py --world 4 --repeats 80

Prints one markdown row per wrapper: ATen ops per block (forward + backward, counted on plain tensors), host time
per block forward and forward + backward (median of the repeats, wall time), and the ratio to plain eager.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint

WIDTH, HEADS, FFN, TOKENS, BLOCKS = 64, 8, 128, 16, 4
# applied in torchtitan's order: TP, activation checkpointing, FSDP
WRAPPERS = ("eager", "ac", "tp", "fsdp", "tp+fsdp", "tp+ac+fsdp", "tp+ac+fsdp+autocast")


class Block(nn.Module):
    """A Llama-style block with the projections as separate modules, the way DTensor plans name them."""

    def __init__(self) -> None:
        super().__init__()
        self.attention_norm, self.ffn_norm = nn.RMSNorm(WIDTH), nn.RMSNorm(WIDTH)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(4))
        self.w1, self.w3 = nn.Linear(WIDTH, FFN, bias=False), nn.Linear(WIDTH, FFN, bias=False)
        self.w2 = nn.Linear(FFN, WIDTH, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attention_norm(x)
        b, t, _ = h.shape
        # -1 heads: under TP each rank holds HEADS / world of them
        q, k, v = (w(h).view(b, t, -1, WIDTH // HEADS).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
        x = x + self.wo(a)
        h = self.ffn_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class Checkpointed(nn.Module):
    """Full activation recomputation of one block, non-reentrant (as torchtitan applies it, before FSDP)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self.block, x, use_reentrant=False)


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def _blocks(wrapper: str, mesh=None) -> nn.Sequential:
    torch.manual_seed(0)
    blocks = nn.Sequential(*(Block() for _ in range(BLOCKS)))
    if "tp" in wrapper:
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
        plan = {**{n: ColwiseParallel() for n in ("wq", "wk", "wv", "w1", "w3")},
                **{n: RowwiseParallel() for n in ("wo", "w2")}}
        for block in blocks:
            parallelize_module(block, mesh["tp"], plan)
    if "ac" in wrapper:
        blocks = nn.Sequential(*(Checkpointed(block) for block in blocks))
    if "fsdp" in wrapper:
        from torch.distributed.fsdp import fully_shard
        for block in blocks:
            fully_shard(block, mesh=mesh["dp"], reshard_after_forward=True)
    return blocks


def measure(wrapper: str, mesh, repeats: int) -> dict:
    blocks = _blocks(wrapper, mesh)
    x = torch.randn(1, TOKENS, WIDTH, requires_grad=True)

    def step(backward: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled="autocast" in wrapper):
            y = blocks(x).float().sum()
        if backward:
            y.backward()

    for _ in range(3):
        step(True)
    out = {}
    for key, backward in (("forward", False), ("step", True)):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step(backward)
            times.append(time.perf_counter() - start)
        out[key] = statistics.median(times) / BLOCKS
    return out


def count_ops() -> float:
    """ATen ops one plain block dispatches, forward and backward."""
    blocks = _blocks("eager")
    with _Count() as c:
        blocks(torch.randn(1, TOKENS, WIDTH, requires_grad=True)).sum().backward()
    return c.ops / BLOCKS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=8, help="the TP degree and the FSDP degree (a fake world of its square)")
    ap.add_argument("--repeats", type=int, default=40, help="timed steps per wrapper (the median is reported)")
    args = ap.parse_args(argv)
    if args.world < 2 or args.repeats < 1:
        ap.error("--world must be 2 or more and --repeats 1 or more")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

    torch.set_num_threads(1)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=args.world ** 2)
    try:
        mesh = init_device_mesh("cpu", (args.world, args.world), mesh_dim_names=("dp", "tp"))
        ops = count_ops()
        print(f"torch {torch.__version__}, world {args.world}, block width {WIDTH}, {TOKENS} tokens, "
              f"{ops:.0f} ATen ops per plain block (forward + backward), one thread")
        print("| wrapper | host ms per block, forward | forward + backward | us per plain op | x eager |")
        print("|---|---|---|---|---|")
        base = None
        for wrapper in WRAPPERS:
            t = measure(wrapper, mesh, args.repeats)
            base = base or t["step"]
            print(f"| {wrapper} | {1e3 * t['forward']:.2f} | {1e3 * t['step']:.2f} | {1e6 * t['step'] / ops:.1f} "
                  f"| {t['step'] / base:.1f} |")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
