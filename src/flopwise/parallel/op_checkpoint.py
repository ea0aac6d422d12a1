"""Per-op selective activation checkpointing (recompute = 'op'): each block keeps its input, the output of every
second matmul in the order its forward runs them (Q, V, gate, down in a SwiGLU block) and the fused attention's
output, and recomputes the rest in the backward. The policy torchtitan runs by default ("op" selective AC), written
here on torch's public API (torch.utils.checkpoint.create_selective_checkpoint_contexts); the planner keeps the
same set (flopwise.flops.op_checkpoint_gemms, plan/memory.py)."""

from __future__ import annotations

import contextlib
import functools
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
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


def keeps(func, counts: Counter, mode: str = "forward") -> bool:
    """The policy's one rule: keep the output of the 1st, 3rd, ... matmul (counted per pass in `counts`) and of a
    fused attention kernel; recompute everything else."""
    if func in MATMULS:
        counts[mode] += 1
        return counts[mode] % 2 == 1
    return func in ATTENTION


def _policy(counts: Counter):
    def policy(ctx, func, *args, **kwargs) -> CheckpointPolicy:
        # the forward and its recomputation count separately: they must agree
        keep = keeps(func, counts, "recompute" if ctx.is_recompute else "forward")
        return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def _contexts():
    return create_selective_checkpoint_contexts(_policy(Counter()))


# callables shown each tensor the policy keeps in a block's forward, the block input included (the memory probe's:
# these live in the checkpoint's own cache, which autograd's saved-tensor hooks do not see); each may return a
# callable, called when the block's backward starts, after which the cache goes
_observers: list = []


@contextlib.contextmanager
def observe_kept(callback):
    """Within the block, `callback(tensor)` for every tensor per-op checkpointing keeps in a block's forward; what it
    returns (if not None) is called when that block's backward starts."""
    _observers.append(callback)
    try:
        yield
    finally:
        _observers.remove(callback)


class _KeptRecorder(TorchDispatchMode):
    """Shows what the policy keeps as the block's own ops run (the forward, not the recomputation)."""

    def __init__(self, show):
        super().__init__()
        self.show, self.counts = show, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if keeps(func, self.counts):
            for t in out if isinstance(out, tuple | list) else (out,):
                if isinstance(t, torch.Tensor):
                    self.show(t)
        return out


def checkpoint_ops(forward):
    """`forward` under per-op selective checkpointing (one count of matmuls per call)."""
    run = functools.partial(checkpoint, forward, use_reentrant=False, context_fn=_contexts)

    @functools.wraps(forward)
    def block(x, *args, **kwargs):
        if not torch.is_grad_enabled():  # evaluation or generation: nothing to keep, no dispatch mode to pay for
            return forward(x, *args, **kwargs)
        if not _observers:
            return run(x, *args, **kwargs)
        releases = []

        def show(t):
            releases.extend(r for observe in _observers if (r := observe(t)) is not None)

        show(x)  # kept to recompute from
        with _KeptRecorder(show):
            y = run(x, *args, **kwargs)
        if releases and isinstance(y, torch.Tensor) and y.requires_grad:
            def release(grad):
                for r in releases:
                    r()
                return grad

            y.register_hook(release)
        return y

    return block
