"""The host's time per transformer block under PyTorch-native wrappers, measured: what `--block-host-ms` costs.

The planner costs a GPU's kernels; the host that issues them runs ahead, unseen, until a block's kernels take less
time than the host needs to issue them (tiny blocks, one sequence at a time, high TP): then the host sets the pace
(plan/cost.py, CostModel.block_host_time; spec.EAGER_BLOCK_HOST_S holds this probe's figures on this project's CPU;
benchmarks/planner_calibration/FINDINGS.md sections 31-33). What a block costs
the host depends on the stack far more than on the block's size: the same block costs twenty times more under DTensor
TP, FSDP2, recomputation and autocast than in plain eager PyTorch. This times it.

The block is Llama-style (RMSNorm, causal SDPA, SwiGLU, projections named as torchtitan names them) and so narrow
that its kernels take next to nothing, so what is timed is the dispatcher, autograd, the wrappers' Python and, on a
GPU, the kernel launches. The collectives go to PyTorch's fake process group, which returns at once: a --world x
--world mesh, FSDP2 over the first dimension and TP over the second, costs only the bookkeeping of that size. Wrappers
are applied in torchtitan's order: TP, activation checkpointing, FSDP.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from flopwise.errors import ConfigError
from flopwise.opcount import count_ops
from flopwise.plan.spec import WRAPPER_PARTS

WIDTH, HEADS, FFN, TOKENS, BLOCKS = 64, 8, 128, 16, 4
# the table `flopwise plan host-probe` prints by default: plain eager, each wrapper alone, then torchtitan's stack
WRAPPERS = ("eager", "ac", "tp", "fsdp", "tp+fsdp", "tp+ac+fsdp", "tp+ac+fsdp+autocast")


class Block(nn.Module):
    """A Llama-style block with its projections as separate modules, the way DTensor plans name them."""

    def __init__(self) -> None:
        super().__init__()
        self.attention_norm, self.ffn_norm = nn.RMSNorm(WIDTH), nn.RMSNorm(WIDTH)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(4))
        self.w1, self.w3 = nn.Linear(WIDTH, FFN, bias=False), nn.Linear(WIDTH, FFN, bias=False)
        self.w2 = nn.Linear(FFN, WIDTH, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attention_norm(x)
        b, t, _ = h.shape
        # -1 heads: under TP each rank holds HEADS / tp of them
        q, k, v = (w(h).view(b, t, -1, WIDTH // HEADS).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
        x = x + self.wo(a)
        h = self.ffn_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class Checkpointed(nn.Module):
    """Full activation recomputation of one block, non-reentrant (torch.utils.checkpoint, as torchtitan applies it)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint
        return checkpoint(self.block, x, use_reentrant=False)


class OpCheckpointed(Checkpointed):
    """Per-op selective checkpointing of one block (recompute = 'op'; flopwise.parallel.op_checkpoint)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from flopwise.parallel.op_checkpoint import checkpoint_ops
        return checkpoint_ops(self.block)(x)


@dataclass(frozen=True)
class HostTime:
    wrapper: str
    forward_s: float  # host seconds per block, forward, one micro-batch
    step_s: float  # forward and backward (with the recomputed forward under ac): what --block-host-ms takes

    def to_dict(self) -> dict:
        return {"wrapper": self.wrapper, "forward_ms": 1e3 * self.forward_s, "step_ms": 1e3 * self.step_s}


def parse_wrapper(text: str) -> frozenset[str]:
    """'tp+ac+fsdp' -> its parts; 'eager' -> none. Refuses an unknown or repeated part."""
    parts = [p.strip().lower() for p in text.split("+")]
    if parts == ["eager"]:
        return frozenset()
    unknown = [p for p in parts if p not in WRAPPER_PARTS]
    if unknown or len(set(parts)) != len(parts):
        raise ConfigError(f"wrapper {text!r}: must be 'eager' or parts of {', '.join(WRAPPER_PARTS)} joined by '+', each "
                          f"once (e.g. tp+ac+fsdp+autocast)")
    if {"ac", "sac"} <= set(parts):
        raise ConfigError(f"wrapper {text!r}: ac (full recomputation) and sac (per-op checkpointing) are two ways to "
                          "checkpoint a block: one of them")
    return frozenset(parts)


def _blocks(parts: frozenset[str], mesh, device: torch.device) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        blocks = [Block().to(device) for _ in range(BLOCKS)]
    if "tp" in parts:
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
        plan = {**{n: ColwiseParallel() for n in ("wq", "wk", "wv", "w1", "w3")},
                **{n: RowwiseParallel() for n in ("wo", "w2")}}
        for block in blocks:
            parallelize_module(block, mesh["tp"], plan)
    if "ac" in parts:
        blocks = [Checkpointed(block) for block in blocks]
    if "sac" in parts:
        blocks = [OpCheckpointed(block) for block in blocks]
    if "fsdp" in parts:
        from torch.distributed.fsdp import fully_shard
        for block in blocks:
            fully_shard(block, mesh=mesh["dp"], reshard_after_forward=True)
    return nn.Sequential(*blocks)


def _time(wrapper: str, mesh, device: torch.device, repeats: int) -> HostTime:
    parts = parse_wrapper(wrapper)
    blocks = _blocks(parts, mesh, device)
    x = torch.randn(1, TOKENS, WIDTH, device=device, requires_grad=True)

    def step(backward: bool) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled="autocast" in parts):
            y = blocks(x).float().sum()
        if backward:
            y.backward()
        if device.type == "cuda":  # the host's queue drained: the kernels were all launched and run
            torch.cuda.synchronize(device)

    for _ in range(3):  # warm-up: lazy initialisation, the allocator's first blocks
        step(True)
    medians = []
    for backward in (False, True):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step(backward)
            times.append(time.perf_counter() - start)
        medians.append(statistics.median(times) / BLOCKS)
    return HostTime(wrapper, *medians)


def plain_block_ops() -> int:
    """ATen ops one plain block dispatches, forward and backward (for the per-op figure)."""
    blocks = _blocks(frozenset(), None, torch.device("cpu"))
    forward, backward = count_ops(lambda: blocks(torch.randn(1, TOKENS, WIDTH, requires_grad=True)).sum())
    return (forward + backward) // BLOCKS


def check(wrappers: tuple[str, ...], world: int, repeats: int, device: str) -> torch.device:
    """The device to time on, once the arguments of `measure` are known to be good (ConfigError otherwise)."""
    if not wrappers:
        raise ConfigError("name at least one stack of wrappers")
    for wrapper in wrappers:
        parse_wrapper(wrapper)
    if world < 2:
        raise ConfigError(f"world = {world}: must be 2 or more (the TP and FSDP degree)")
    if repeats < 1:
        raise ConfigError(f"repeats = {repeats}: must be 1 or more")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r}: must be cpu or cuda (cuda:N for another GPU)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda: no CUDA device is visible to this process")
    return dev


def measure(wrappers: tuple[str, ...] = WRAPPERS, world: int = 8, repeats: int = 40,
            device: str = "cpu") -> list[HostTime]:
    """Host time per block under each wrapper (median of `repeats` steps of BLOCKS blocks), on one thread, with a
    fake process group of world x world ranks for the collectives. Refuses inside a process that already has a
    process group (a distributed job: this one would replace it)."""
    dev = check(wrappers, world, repeats, device)
    if dist.is_initialized():
        raise ConfigError("a process group is already initialised: run the probe in a process of its own")
    try:
        from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend
    except ImportError as exc:  # pragma: no cover - every torch this project supports has it
        raise ConfigError(f"this torch ({torch.__version__}) has no fake process group: {exc}") from exc
    from torch.distributed.device_mesh import init_device_mesh

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the host's one dispatching thread, not intra-op parallelism
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world * world)
        mesh = init_device_mesh(dev.type, (world, world), mesh_dim_names=("dp", "tp"))
        return [_time(wrapper, mesh, dev, repeats) for wrapper in wrappers]
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(threads)
