"""Measure what a training step keeps in memory, per rank, for any engine (single or parallel).

Model state: this rank's parameters, gradients and optimizer tensors (local shards), after a step.
Activations: peak bytes autograd holds for the backward during one step, counted per storage (views of one
tensor count once), parameters excluded: a storage is live from its first save to its last use.
Used by benchmarks/parallel_memory.py and by the test that holds the planner to the trainer."""

from __future__ import annotations

from collections import Counter

import torch


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _bytes(t: torch.Tensor) -> int:
    t = _local(t)
    return t.numel() * t.element_size()


def model_state_bytes(engine) -> int:
    params = [p for _, p in engine.named] if hasattr(engine, "named") else list(engine.model.parameters())
    total = sum(_bytes(p) for p in params) + sum(_bytes(p.grad) for p in params if p.grad is not None)
    for state in engine.optimizer.state.values():
        total += sum(_bytes(v) for v in state.values() if torch.is_tensor(v) and v.dim())
    return total


def measure_step_memory(engine, inputs: torch.Tensor, targets: torch.Tensor, eod_id: int | None = None) -> dict:
    """Run two steps (the first creates optimizer state); measure the second's activations."""
    engine.forward_backward(inputs, targets, eod_id)
    engine.clip_and_step(1e-4)
    owned = {_local(p).untyped_storage().data_ptr() for p in (
        [p for _, p in engine.named] if hasattr(engine, "named") else engine.model.parameters())}
    refs: Counter[int] = Counter()
    size: dict[int, int] = {}
    live, peak = [0], [0]

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in owned or ptr == 0:
            return t
        if refs[ptr] == 0:
            size[ptr] = storage.nbytes()
            live[0] += size[ptr]
            peak[0] = max(peak[0], live[0])
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

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        engine.forward_backward(inputs, targets, eod_id)
    state = model_state_bytes(engine)
    engine.zero_grad()
    return {"model_state_bytes": state, "activation_peak_bytes": peak[0]}
