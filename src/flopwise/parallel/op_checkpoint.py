"""Per-op selective activation checkpointing (recompute = 'op'): each block keeps its input, the output of every
second matmul in the order its forward runs them (Q, V, gate, down in a SwiGLU block) and the fused attention's
output, and recomputes the rest in the backward. The policy torchtitan runs by default ("op" selective AC), written
here on torch's public API (torch.utils.checkpoint.create_selective_checkpoint_contexts); the planner keeps the
same set (flopwise.flops.op_checkpoint_gemms, plan/memory.py)."""

from __future__ import annotations

import functools
from collections import Counter

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

# a linear layer's matmul, as autograd's dispatcher sees it (nn.Linear without bias on any batch shape)
MATMULS = frozenset({torch.ops.aten.mm.default})
# the fused attention kernels SDPA dispatches to (the CPU's, FlashAttention's, the memory-efficient one, cuDNN's)
ATTENTION = frozenset(
    getattr(torch.ops.aten, name).default
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                 "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
    if hasattr(torch.ops.aten, name)
)


def _policy(counts: Counter):
    def policy(ctx, func, *args, **kwargs) -> CheckpointPolicy:
        if func in MATMULS:  # the forward and its recomputation count separately: they must agree
            mode = "recompute" if ctx.is_recompute else "forward"
            counts[mode] += 1
            return CheckpointPolicy.MUST_SAVE if counts[mode] % 2 else CheckpointPolicy.PREFER_RECOMPUTE
        return CheckpointPolicy.MUST_SAVE if func in ATTENTION else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def _contexts():
    return create_selective_checkpoint_contexts(_policy(Counter()))


def checkpoint_ops(forward):
    """`forward` under per-op selective checkpointing (one count of matmuls per call)."""
    return functools.partial(checkpoint, forward, use_reentrant=False, context_fn=_contexts)
