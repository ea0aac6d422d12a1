"""Measure what a training step keeps in memory, per rank, for the engine under any layout.

Model state: this rank's parameters, gradients and optimizer tensors (local shards), after a step.
Activations: peak bytes autograd holds for the backward during one step, counted per storage (views of one
tensor count once), parameters excluded: a storage is live from its first save to its last use. Per-op
checkpointing keeps its tensors in the checkpoint's own cache, out of the hooks' sight: parallel/op_checkpoint.py shows
them to the probe, live from the block's forward to the start of its backward.
On a CPU, where no allocator keeps a peak, this is the trainer's measured memory; benchmarks/parallel_memory.py,
benchmarks/compiled_memory.py and the tests that hold the planner to the trainer and to PyTorch use it too."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from contextlib import contextmanager

import torch

from flopwise.parallel.op_checkpoint import observe_kept


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _bytes(t: torch.Tensor) -> int:
    t = _local(t)
    return t.numel() * t.element_size()


def model_state_bytes(engine) -> int:
    params = [p for _, p in engine.named]
    total = sum(_bytes(p) for p in params) + sum(_bytes(p.grad) for p in params if p.grad is not None)
    for state in engine.optimizer.state.values():
        total += sum(_bytes(v) for v in state.values() if torch.is_tensor(v) and v.dim())
    return total


@contextmanager
def saved_tensor_bytes(exclude: Iterable[torch.Tensor]):
    """Within the block, count the bytes autograd saves for the backward, once per storage while it is alive, leaving
    out the storages of `exclude` (parameters, buffers); yields a dict, kept up to date, with "peak" (the most alive at
    once, a storage alive from its first save to its last unpack) and "total" (every storage saved while not already
    alive: over a forward, the step's activations as the planner counts them)."""
    owned = {_local(t).untyped_storage().data_ptr() for t in exclude}
    refs: Counter[int] = Counter()
    size: dict[int, int] = {}
    live, result = [0], {"peak": 0, "total": 0}

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in owned or ptr == 0:
            return t
        if refs[ptr] == 0:
            size[ptr] = storage.nbytes()
            live[0] += size[ptr]
            result["total"] += size[ptr]
            result["peak"] = max(result["peak"], live[0])
        refs[ptr] += 1
        return (t, ptr)

    def unpack(packed):
        if not isinstance(packed, tuple):
            return packed
        t, ptr = packed
        refs[ptr] -= 1
        if refs[ptr] == 0:
            live[0] -= size.pop(ptr)
        return t

    def kept(t):  # per-op checkpointing's own cache: alive from the block's forward to its backward
        packed = pack(t)
        return None if packed is t else (lambda: unpack(packed))

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack), observe_kept(kept):
        yield result


def saved_tensor_peak(engine):
    """saved_tensor_bytes for the engine's step, its parameters (this rank's shards) left out."""
    return saved_tensor_bytes(p for _, p in engine.named)


def measure_step_memory(engine, inputs: torch.Tensor, targets: torch.Tensor, eod_id: int | None = None) -> dict:
    """Run two steps (the first creates optimizer state); measure the second's activations."""
    engine.forward_backward(inputs, targets, eod_id)
    engine.clip_and_step(1e-4)
    with saved_tensor_peak(engine) as saved:
        engine.forward_backward(inputs, targets, eod_id)
    state = model_state_bytes(engine)
    engine.zero_grad()
    return {"model_state_bytes": state, "activation_peak_bytes": saved["peak"]}
