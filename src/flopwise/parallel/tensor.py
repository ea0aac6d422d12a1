"""Tensor parallelism with optional sequence parallelism, applied to a model part from outside.

Megatron-style (Shoeybi et al. 2019; Korthikanti et al. 2022): wq/wk/wv and w1/w3 are split by output
rows (column parallel), wo and w2 by input columns (row parallel); embedding and LM head are split over
the vocabulary, with a vocabulary-parallel loss. The LFA filter needs the full hidden vector and
neighbouring positions, so its weights stay replicated and it runs on the gathered sequence; its weight
gradients are partial sums (each rank back-propagates only its own heads) and are all-reduced.
With sequence parallelism the residual stream inside a block, and the norms on it, are split along the
sequence; the norm weight gradients are then partial too.

Returns a TensorParallelInfo recording, per parameter name, the dimension it is split along (or None),
which the engine uses for gradient fix-ups, the global gradient norm and checkpoint gathering/slicing.

Mixture-of-experts blocks (models/moe.py) get Megatron-LM's expert tensor parallelism: the router is
replicated, so every TP rank computes the same routing of the same (gathered) tokens and, under expert
parallelism, sends the same rows over its own ep group (the ranks with its TP coordinate); each expert's
w1/w3 are split by output rows and w2 by input columns, and the layer's partial outputs are summed over
TP by the same hooks as a dense MLP. The gradients that reach the router from the main loss are then
partial sums (each rank back-propagates its share of the expert outputs), so the router's weight
gradients are all-reduced like the LFA filter's, and each rank carries 1/tp of the auxiliary losses'
gradient (MoEFeedForward.aux_loss_share) so that the sum over TP counts them once.

Latent attention (models/attention.py LatentAttention) is cut by heads like the plain kind: the query projection
(W_q, or the up projection W_qb) and the key-value up projection W_kvb by output rows, W_o by input columns. Its down
projections and latent norms stay whole (Megatron-Core's MLA duplicates them), so their gradients, which each rank
back-propagates from its own heads only, are partial sums and are all-reduced like the LFA filter's."""

from __future__ import annotations

import types
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from flopwise.models.moe import MoEFeedForward
from flopwise.parallel import collectives as C


@dataclass
class TensorParallelInfo:
    shard_dim: dict[str, int] = field(default_factory=dict)  # parameter name -> split dimension
    partial_grads: list[str] = field(default_factory=list)  # replicated parameters with partial gradients
    vocab_start: int = 0


def _shard(module: nn.Module, name: str, dim: int, rank: int, size: int) -> nn.Parameter:
    weight = getattr(module, name)
    piece = weight.detach().chunk(size, dim=dim)[rank].clone()
    param = nn.Parameter(piece, requires_grad=weight.requires_grad)
    setattr(module, name, param)
    return param


def _vocab_parallel_embedding(self, ids: torch.Tensor) -> torch.Tensor:
    local = ids - self.vocab_start
    outside = (local < 0) | (local >= self.weight.shape[0])
    out = F.embedding(local.clamp(0, self.weight.shape[0] - 1), self.weight) * (~outside).unsqueeze(-1)
    return C.reduce_from_region(out, self.tp_group)


def _shard_experts(layer: MoEFeedForward, prefix: str, rank: int, size: int, info: TensorParallelInfo) -> None:
    """Expert TP: w1, w3 [n, ffn, h] split along ffn (column parallel), w2 [n, h, ffn] along ffn (row
    parallel); the replicated router's gradients are partial, its auxiliary losses counted 1/size each."""
    for name, dim in (("w1", 1), ("w3", 1), ("w2", 2)):
        _shard(layer.experts, name, dim, rank, size)
        info.shard_dim[f"{prefix}.experts.{name}"] = dim
    info.partial_grads += [f"{prefix}.router.{n}" for n, _ in layer.router.named_parameters()]
    layer.aux_loss_share = 1.0 / size
    if layer.shared is not None:  # the shared expert: a dense SwiGLU's cut (its output summed with the experts')
        _shard_mlp(layer.shared, f"{prefix}.shared", rank, size, info)


def _shard_mlp(mlp: nn.Module, prefix: str, rank: int, size: int, info: TensorParallelInfo) -> None:
    """A dense MLP's Megatron cut: w1 (and SwiGLU's w3) by output rows (column parallel), w2 by input columns (row
    parallel)."""
    for name in ("w1", "w3"):
        if hasattr(mlp, name):
            _shard(getattr(mlp, name), "weight", 0, rank, size)
            info.shard_dim[f"{prefix}.{name}.weight"] = 0
    _shard(mlp.w2, "weight", 1, rank, size)
    info.shard_dim[f"{prefix}.w2.weight"] = 1


def apply_tensor_parallel(part: nn.Module, group, sequence_parallel: bool) -> TensorParallelInfo:
    import torch.distributed as dist

    rank, size = dist.get_rank(group), dist.get_world_size(group)
    info = TensorParallelInfo()
    sp = sequence_parallel

    def enter(_module, args):  # before column-parallel layers: full input, partial gradients summed
        x = C.gather_sequence(args[0], group) if sp else C.copy_to_region(args[0], group)
        return (x, *args[1:])

    def leave(_module, _args, out):  # after row-parallel layers: partial outputs summed
        return C.reduce_scatter_sequence(out, group) if sp else C.reduce_from_region(out, group)

    for index, block in part.layers.items():
        prefix = f"layers.{index}"
        attn, mlp = block.attn, block.mlp
        for name in ("wq", "wk", "wv", "wq_b", "wkv_b"):  # the column-parallel projections this kind has
            if hasattr(attn, name):
                _shard(getattr(attn, name), "weight", 0, rank, size)
                info.shard_dim[f"{prefix}.attn.{name}.weight"] = 0
        for name in ("wq_a", "q_norm", "wkv_a", "kv_norm"):  # latent attention's whole parts: partial gradients
            if hasattr(attn, name):
                info.partial_grads.append(f"{prefix}.attn.{name}.weight")
        _shard(attn.wo, "weight", 1, rank, size)
        info.shard_dim[f"{prefix}.attn.wo.weight"] = 1
        if isinstance(mlp, MoEFeedForward):
            _shard_experts(mlp, f"{prefix}.mlp", rank, size, info)
        else:
            _shard_mlp(mlp, f"{prefix}.mlp", rank, size, info)
        for sub in (attn, mlp):
            sub.register_forward_pre_hook(enter)
            sub.register_forward_hook(leave)
        if attn.lfa is not None:
            info.partial_grads += [f"{prefix}.attn.lfa.{n}" for n, _ in attn.lfa.named_parameters()]
        if sp:
            block.register_forward_pre_hook(lambda _m, args: (C.scatter_sequence(args[0], group), *args[1:]))
            block.register_forward_hook(lambda _m, _a, out: C.gather_sequence(out, group, reduce_grad=False))
            info.partial_grads += [f"{prefix}.attn_norm.weight", f"{prefix}.ffn_norm.weight"]

    vocab = None
    emb, head = part.tok_embeddings, part.output
    tied = emb is not None and head is not None and head.weight is emb.weight
    if emb is not None:
        vocab = emb.weight.shape[0]
        _shard(emb, "weight", 0, rank, size)
        emb.vocab_start = rank * (vocab // size)
        emb.tp_group = group
        emb.forward = types.MethodType(_vocab_parallel_embedding, emb)
        info.shard_dim["tok_embeddings.weight"] = 0
    if head is not None:
        vocab = vocab or head.weight.shape[0]
        if tied:
            head.weight = emb.weight
        else:
            _shard(head, "weight", 0, rank, size)
            info.shard_dim["output.weight"] = 0
        head.register_forward_pre_hook(lambda _m, args: (C.copy_to_region(args[0], group),))
    info.vocab_start = rank * (vocab // size) if vocab else 0
    return info
