"""Autograd-aware collectives for tensor and sequence parallelism (Megatron-LM's f/g operators;
Shoeybi et al. 2019, section 3, and Korthikanti et al. 2022, section 4.2.2 for the sequence-parallel pair).

The sequence-parallel reduce-scatter is a true reduce_scatter_tensor: on NCCL it moves half an all-reduce's bytes,
as the planner counts it. Gloo runs the same call as all-reduces (PyTorch's fallback), and the planner counts that too
(plan/cost.py, CostModel.ring)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _all_gather(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    world = dist.get_world_size(group)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def _split(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    return x.chunk(dist.get_world_size(group), dim=dim)[dist.get_rank(group)].contiguous()


def _all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    x = x.contiguous().clone()
    dist.all_reduce(x, group=group)
    return x


def _reduce_scatter(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    # the sequence divides by tp (layout.check refuses it otherwise); reduce_scatter_tensor shards dim 0
    front = x.movedim(dim, 0).contiguous()
    out = front.new_empty((front.shape[0] // dist.get_world_size(group), *front.shape[1:]))
    dist.reduce_scatter_tensor(out, front, group=group)
    return out.movedim(0, dim).contiguous()


class _CopyToRegion(torch.autograd.Function):
    """f: identity forward, all-reduce of the gradient backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad, ctx.group), None


class _ReduceFromRegion(torch.autograd.Function):
    """g: all-reduce forward, identity backward."""

    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherSequence(torch.autograd.Function):
    """All-gather along the sequence forward; reduce-scatter backward (sequence parallel f)."""

    @staticmethod
    def forward(ctx, x, group, reduce_grad):
        ctx.group, ctx.reduce_grad = group, reduce_grad
        return _all_gather(x, 1, group)

    @staticmethod
    def backward(ctx, grad):
        if ctx.reduce_grad:
            return _reduce_scatter(grad, 1, ctx.group), None, None
        return _split(grad, 1, ctx.group), None, None


class _ScatterSequence(torch.autograd.Function):
    """Keep this rank's slice of the sequence forward; all-gather backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split(x, 1, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, 1, ctx.group), None


class _ReduceScatterSequence(torch.autograd.Function):
    """Reduce-scatter along the sequence forward; all-gather backward (sequence parallel g)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _reduce_scatter(x, 1, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, 1, ctx.group), None


def copy_to_region(x, group):
    return _CopyToRegion.apply(x, group)


def reduce_from_region(x, group):
    return _ReduceFromRegion.apply(x, group)


def gather_sequence(x, group, reduce_grad: bool = True):
    """reduce_grad=True where each rank's downstream gradient is partial (before column-parallel layers)."""
    return _GatherSequence.apply(x, group, reduce_grad)


def scatter_sequence(x, group):
    return _ScatterSequence.apply(x, group)


def reduce_scatter_sequence(x, group):
    return _ReduceScatterSequence.apply(x, group)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Cross-entropy over logits sharded along the vocabulary (Megatron-LM's vocab-parallel loss):
    a max and a sum-of-exponentials all-reduce replace the gather of the full logits."""

    @staticmethod
    def forward(ctx, logits, targets, vocab_start, group):
        logits = logits.float()
        local_max = logits.max(dim=-1).values
        dist.all_reduce(local_max, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - local_max.unsqueeze(-1)
        exp = shifted.exp()
        sum_exp = exp.sum(dim=-1)
        dist.all_reduce(sum_exp, group=group)
        local_t = targets - vocab_start
        in_range = (local_t >= 0) & (local_t < logits.shape[-1])
        safe_t = local_t.clamp(0, logits.shape[-1] - 1)
        target_logit = shifted.gather(-1, safe_t.unsqueeze(-1)).squeeze(-1) * in_range
        dist.all_reduce(target_logit, group=group)
        loss = sum_exp.log() - target_logit
        ctx.save_for_backward(exp / sum_exp.unsqueeze(-1), safe_t, in_range)
        return loss

    @staticmethod
    def backward(ctx, grad):
        softmax, safe_t, in_range = ctx.saved_tensors
        g = softmax.clone()
        g.scatter_add_(-1, safe_t.unsqueeze(-1), -in_range.to(g.dtype).unsqueeze(-1))
        return g * grad.unsqueeze(-1), None, None, None


def vocab_parallel_cross_entropy(logits, targets, vocab_start: int, group) -> torch.Tensor:
    """Mean loss over tokens; logits [b, s, V/tp] hold the vocabulary slice starting at vocab_start."""
    per_token = _VocabParallelCrossEntropy.apply(logits.flatten(0, 1), targets.flatten(), vocab_start, group)
    return per_token.mean()


class _AllToAll(torch.autograd.Function):
    """all_to_all_single with uneven splits forward; the reverse exchange (splits swapped) backward.
    gloo implements all_to_all_single (uneven splits included) on CPU tensors; NCCL on GPU tensors."""

    @staticmethod
    def forward(ctx, x, send: list[int], recv: list[int], group):
        ctx.send, ctx.recv, ctx.group = send, recv, group
        return _all_to_all(x, send, recv, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_to_all(grad, ctx.recv, ctx.send, ctx.group), None, None, None


def _all_to_all(x: torch.Tensor, send: list[int], recv: list[int], group) -> torch.Tensor:
    out = x.new_empty((sum(recv), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv, input_split_sizes=send, group=group)
    return out


def all_to_all(x: torch.Tensor, send: list[int], recv: list[int], group) -> torch.Tensor:
    """Rows x[sum(send[:r]) : sum(send[:r+1])] go to rank r of `group`; returns the rows received, by source rank."""
    return _AllToAll.apply(x, send, recv, group)
