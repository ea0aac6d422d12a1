"""Data parallelism: replicate (all-reduce), ZeRO-1 (optimizer state partitioned), ZeRO-2 and ZeRO-3
(FSDP2 `fully_shard`, without / with resharding parameters after forward), hybrid sharding (FSDP2 over a
2-D mesh: shard within dp_shard, replicate across dp_replicate).

ZeRO stages after Rajbhandari et al. 2020: stage 1 partitions optimizer states, 2 also gradients, 3 also
parameters. Stage 1 here: gradients are all-reduced over the whole data-parallel group, each dp_shard rank
runs AdamW on the parameters it owns (greedy partition by size) and broadcasts them afterwards."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def apply_fsdp(part: nn.Module, mesh, reshard_after_forward: bool, ignored: set[nn.Parameter] | None = None) -> None:
    """FSDP2 on every block, then the rest; `ignored` parameters stay plain tensors (expert weights under ep)."""
    from torch.distributed.fsdp import fully_shard

    kwargs = {"ignored_params": ignored} if ignored else {}
    for block in part.layers.values():
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward, **kwargs)
    fully_shard(part, mesh=mesh, reshard_after_forward=reshard_after_forward, **kwargs)


def all_reduce_grads(params: list[nn.Parameter], group, average: bool = True) -> None:
    """One flattened all-reduce of every gradient (a single bucket: fewer, larger messages)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or dist.get_world_size(group) == 1:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat, group=group)
    if average:
        flat /= dist.get_world_size(group)
    for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
        g.copy_(synced)


def partition_params(named: list[tuple[str, nn.Parameter]], parts: int) -> list[int]:
    """Owner (0..parts-1) of each parameter: largest first onto the least-loaded rank."""
    load = [0] * parts
    owner = [0] * len(named)
    order = sorted(range(len(named)), key=lambda i: -named[i][1].numel())
    for i in order:
        r = min(range(parts), key=lambda k: load[k])
        owner[i] = r
        load[r] += named[i][1].numel()
    return owner


@torch.no_grad()
def broadcast_from_owners(named: list[tuple[str, nn.Parameter]], owners: list[int], group) -> None:
    for (_, param), owner in zip(named, owners, strict=True):
        dist.broadcast(param.data, src=dist.get_global_rank(group, owner), group=group)
