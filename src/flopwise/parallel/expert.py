"""Expert parallelism: each rank of an `ep` group keeps a contiguous range of every MoE layer's experts, and
tokens travel to the rank holding their expert and back with all-to-all (GShard, Lepikhin et al. 2020,
section 2.2; the dispatch/combine pair of Megatron-LM's token dispatcher and torchtitan's).

The ep group is made of data-parallel ranks (`ep` divides `dp`): each still reads its own slice of the
batch and routes its own tokens. Expert weights are therefore split, not replicated, over the ep group, and
their gradients are summed over the tokens of all its ranks by the backward of the all-to-all; the engine
only has to reduce them over the ranks that hold the same experts (dp / ep of them) — see Parts.sync_grads.
With ZeRO those ranks also shard the experts among them: optimizer state (zero = 1, Parts.expert_owners), or
FSDP over them (zero = 2, 3; Parts.expert_fsdp).
Under tensor parallelism each TP rank of an ep rank exchanges over its own ep group (the ranks with its TP
coordinate) the same token rows, for its cut of every expert (flopwise.parallel.tensor).

Dispatch of one MoE layer on one rank (E experts, ep ranks, n = E / ep local experts):
  1. the [E] rows per expert are exchanged (all-to-all of n counts to each rank), so every rank knows
     how many rows it receives from each source for each of its experts;
  2. the rows, grouped by global expert id and so by destination rank, go out with one all-to-all of
     uneven splits; they arrive grouped by (source rank, local expert);
  3. a permutation regroups them by (local expert, source rank), the contiguous blocks GroupedExperts runs.
Combine is the inverse permutation and the reverse all-to-all. Both all-to-alls are autograd functions
(flopwise.parallel.collectives.all_to_all), so the backward retraces the same path."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from flopwise.models.moe import moe_layers
from flopwise.parallel.collectives import all_to_all


class AllToAllDispatcher:
    """Moves each token row to the rank of the ep group holding its expert, and back (models.moe's interface)."""

    def __init__(self, group, num_experts: int) -> None:
        self.group = group
        self.ep = dist.get_world_size(group)
        self.num_experts = num_experts
        self.per_rank = num_experts // self.ep

    def dispatch(self, rows: torch.Tensor, counts: torch.Tensor, start: int, end: int):
        ep, n = self.ep, self.per_rank
        recv_counts = torch.empty_like(counts)
        dist.all_to_all_single(recv_counts, counts.contiguous(), group=self.group)  # [source, local expert]
        by_source = recv_counts.view(ep, n)
        send = counts.view(ep, n).sum(dim=1).tolist()
        recv = by_source.sum(dim=1).tolist()
        received = all_to_all(rows, send, recv, self.group)
        order = _source_major_to_expert_major(by_source)
        return received[order], by_source.sum(dim=0).tolist(), (order, send, recv)

    def combine(self, out: torch.Tensor, handle) -> torch.Tensor:
        order, send, recv = handle
        back = out.new_zeros(out.shape).index_copy(0, order, out)  # rows in arrival (source, expert) order
        return all_to_all(back, recv, send, self.group)


def _source_major_to_expert_major(counts: torch.Tensor) -> torch.Tensor:
    """counts [S, n]: rows arrived as blocks (s, e) in source-major order; the row indices that list them
    expert-major, (e, s), each block kept in its order."""
    flat = counts.reshape(-1)
    starts = torch.cumsum(flat, 0) - flat  # start of block (s, e) in arrival order
    blocks = counts.t().reshape(-1)  # sizes in (e, s) order
    block_starts = starts.view(counts.shape).t().reshape(-1)
    total = int(flat.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.long, device=counts.device)
    # index of each output row = start of its block + its offset inside the block
    first = torch.cumsum(blocks, 0) - blocks
    owner = torch.repeat_interleave(torch.arange(blocks.numel(), device=counts.device), blocks)
    return block_starts[owner] + torch.arange(total, device=counts.device) - first[owner]


def apply_expert_parallel(part: nn.Module, group, ep_rank: int, ep: int) -> list[str]:
    """Keep this rank's experts [r E / ep, (r + 1) E / ep) of every MoE layer in `part` and install the
    all-to-all dispatcher. Returns the names of the expert parameters (split along dim 0 over the ep group)."""
    names = []
    for prefix, layer in moe_layers(part):
        per = layer.num_experts // ep
        layer.keep_experts(ep_rank * per, (ep_rank + 1) * per, AllToAllDispatcher(group, layer.num_experts))
        names += [f"{prefix}.experts.{n}" for n, _ in layer.experts.named_parameters()]
    return names
