"""parallelize(model, dims, layout) -> Parts: the model parts this rank runs and how their tensors are laid out.

The order is torchtitan's: pipeline stages are cut from the full model (so every layout starts from the
weights one process would), then tensor (+ sequence) parallelism, activation recomputation, compilation,
the move to the device, and FSDP2 last for ZeRO-2/3. A world of one gets one part, the model itself.

Parts is the parallel side of the engine's interface (flopwise.train.engine): it knows which gradients are
partial or replicated and how a parameter is cut, so the engine can synchronise gradients, take the global
gradient norm and read or write full tensors by the single-device parameter names, without knowing any
layout. It owns no optimizer, loss or checkpoint format."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from flopwise.errors import ParallelError
from flopwise.layout import Layout
from flopwise.models.config import ModelConfig
from flopwise.models.moe import moe_layers
from flopwise.parallel.data_parallel import all_reduce_grads, apply_fsdp, broadcast_from_owners, partition_params
from flopwise.parallel.dims import ParallelDims, build_expert_mesh, build_mesh
from flopwise.parallel.expert import apply_expert_parallel
from flopwise.parallel.op_checkpoint import checkpoint_ops
from flopwise.parallel.pipeline import build_stage_part, stage_layers
from flopwise.parallel.tensor import TensorParallelInfo, apply_tensor_parallel


def apply_recompute(part: nn.Module, mode: str, every: int = 1) -> None:
    """Recompute in the backward what the forward would keep: the attention core of every block (selective,
    Korthikanti et al. 2022), every second matmul and the elementwise work of every block (op, per-op selective
    checkpointing: parallel/op_checkpoint.py) or whole blocks (full; every k-th one with `every` = k). The forward is
    replaced on the instance, so parameter names stay those of the single-device model."""
    if mode == "none":
        return
    for key, block in part.layers.items():
        if mode == "selective":
            block.attn.core = functools.partial(checkpoint, block.attn.core, use_reentrant=False)
        elif mode == "op":
            block.forward = checkpoint_ops(block.forward)
        elif int(key) % every == 0:
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


@dataclass
class Parts:
    modules: list[nn.Module]  # this rank's model parts, in stage order
    stage_ids: list[int]  # the pipeline stage of each part
    dims: ParallelDims
    layout: Layout
    device: torch.device
    model_cfg: ModelConfig
    tp_info: list[TensorParallelInfo] = field(default_factory=list)
    rank: int = 0
    mesh: object = None
    tp_group: object = None
    pp_group: object = None
    dp_group: object = None
    dp_shard_group: object = None
    tie_group: object = None  # first and last stage: they share the tied embedding
    owners: list[int | None] | None = None  # ZeRO-1: the dp_shard rank that steps each parameter (None: every rank)
    expert_owners: list[int | None] | None = None  # ZeRO-1 under ep: the ep_dp rank that steps each expert parameter
    expert_fsdp: bool = False  # ZeRO-2/3 under ep with dp > ep: expert weights FSDP-sharded over ep_dp
    ep_dp_mesh: object = None
    expert_names: list[set[str]] = field(default_factory=list)  # per part: expert parameters, split over ep (dim 0)
    ep_group: object = None  # the ranks that split the experts among them
    ep_dp_group: object = None  # the ranks that hold the same experts (dp / ep of them)
    ep_rank: int = 0
    ep_dp_rank: int = 0

    @property
    def num_stages(self) -> int:
        return self.layout.stages if self.layout.pp > 1 else 1

    @property
    def fsdp(self) -> bool:
        return self.layout.zero >= 2

    @property
    def named(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for part in self.modules for n, p in part.named_parameters()]

    @property
    def data_rank(self) -> int:
        if self.mesh is None:
            return 0
        _, dr, ds, _ = self.mesh.get_coordinate()
        return dr * self.dims.dp_shard + ds

    @property
    def tp_rank(self) -> int:
        return self.mesh.get_coordinate()[3] if self.mesh is not None else 0

    # ---- what the optimizer steps ---------------------------------------------------------------
    def optimizer_params(self) -> list[nn.Parameter]:
        """The parameters this rank's optimizer steps: all local ones, or its ZeRO-1 share (under ep also of
        the expert parameters, over ep_dp)."""
        named = self.named
        keep = [True] * len(named)
        if self.owners is not None:
            mine = self.mesh.get_coordinate()[2]
            keep = [k and owner in (None, mine) for k, owner in zip(keep, self.owners, strict=True)]
        if self.expert_owners is not None:
            keep = [k and owner in (None, self.ep_dp_rank) for k, owner in zip(keep, self.expert_owners, strict=True)]
        return [p for (_, p), k in zip(named, keep, strict=True) if k]

    def after_step(self) -> None:
        """ZeRO-1: every shard owner broadcasts the parameters it stepped over dp_shard; the owners of expert
        parameters broadcast theirs over ep_dp (the ranks holding the same experts)."""
        for owners, group in ((self.owners, self.dp_shard_group), (self.expert_owners, self.ep_dp_group)):
            if owners is not None:
                shared = [(item, owner) for item, owner in zip(self.named, owners, strict=True) if owner is not None]
                broadcast_from_owners([item for item, _ in shared], [owner for _, owner in shared], group)

    def is_expert(self, part_index: int, name: str) -> bool:
        return bool(self.expert_names) and name in self.expert_names[part_index]

    def _split_experts(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(expert parameters, the others) of this rank's parts."""
        experts, others = [], []
        for i, part in enumerate(self.modules):
            for name, prm in part.named_parameters():
                (experts if self.is_expert(i, name) else others).append(prm)
        return experts, others

    # ---- gradients ------------------------------------------------------------------------------
    def sync_grads(self) -> None:
        """Partial TP gradients summed; data-parallel averaging (FSDP does its own); tied embedding summed
        between the first and last pipeline stage."""
        if self.dims.tp > 1:
            for part, info in zip(self.modules, self.tp_info, strict=True):
                params = dict(part.named_parameters())
                for name in info.partial_grads:
                    grad = params[name].grad
                    if grad is not None:
                        dist.all_reduce(_local(grad), group=self.tp_group)
        experts, others = self._split_experts()
        if not self.fsdp and self.dims.dp > 1:
            all_reduce_grads(others, self.dp_group)
        if experts and self.dims.ep > 1:
            # each expert's gradient already sums the tokens of its whole ep group (the all-to-all's
            # backward): sum over the ranks holding the same experts, then divide by dp like the rest
            # (FSDP over ep_dp has already averaged over those dp / ep ranks: divide by ep)
            if not self.expert_fsdp:
                all_reduce_grads(experts, self.ep_dp_group, average=False)
            divisor = self.dims.ep if self.expert_fsdp else self.dims.dp
            for prm in experts:
                if prm.grad is not None:
                    prm.grad.div_(divisor)
        if self.tie_group is not None:
            tied = self._tied_param()
            if tied is not None and tied.grad is not None:
                dist.all_reduce(_local(tied.grad), group=self.tie_group)

    def local_grads(self) -> list[torch.Tensor]:
        return [_local(p.grad) for _, p in self.named if p.grad is not None]

    def grad_norm(self) -> float:
        """Global L2 norm of the gradients, each value counted once however many ranks hold it."""
        groups: dict[float, list[torch.Tensor]] = {}
        for i, part in enumerate(self.modules):
            for name, prm in part.named_parameters():
                if prm.grad is not None:
                    groups.setdefault(self._replication(name, i), []).append(_local(prm.grad))
        if self.dims.world_size == 1:  # the single-device sum, exactly as clip_grad_norm_ takes it
            return float(torch.nn.utils.get_total_norm(groups.get(1, []), foreach=True)) if groups else 0.0
        total = torch.zeros(1, dtype=torch.float64, device=self.device)
        for copies, grads in groups.items():
            total += torch.nn.utils.get_total_norm(grads, foreach=True).double() ** 2 / copies
        dist.all_reduce(total)
        return float(total.sqrt())

    def _replication(self, name: str, part_index: int) -> float:
        """How many ranks hold the same gradient values for this parameter (counted once in the norm)."""
        if self._is_tied_head(part_index, name):
            return float("inf")  # the head copy of the tied embedding: the first stage counts it
        if self.is_expert(part_index, name):  # split over ep (and cut by tp), replicated or sharded over ep_dp
            return 1.0 if self.expert_fsdp else float(self.dims.dp // self.dims.ep)
        r = 1
        if name not in self.tp_info[part_index].shard_dim:
            r *= self.dims.tp
        r *= self.dims.dp_replicate if self.fsdp else self.dims.dp
        return float(r)

    def _tied_param(self):
        """This rank's copy of the tied embedding: on the first stage the embedding, on the last the head."""
        for part in self.modules:
            if part.tok_embeddings is not None:
                return part.tok_embeddings.weight
            if part.output is not None:
                return part.output.weight
        return None

    def _is_tied_head(self, part_index: int, name: str) -> bool:
        part = self.modules[part_index]
        return (self.dims.pp > 1 and self.model_cfg.tie_embeddings and name == "output.weight"
                and part.tok_embeddings is None)

    # ---- full tensors by single-device names (checkpoints) --------------------------------------
    def full_items(self):
        """(name, part index, parameter) of every parameter this rank holds, the head copy of a tied
        embedding left out (the first stage holds it under its embedding name)."""
        for i, part in enumerate(self.modules):
            for name, prm in part.named_parameters():
                if not self._is_tied_head(i, name):
                    yield name, i, prm

    def load_targets(self):
        """(checkpoint name, part index, local name, parameter) of every parameter to fill from a checkpoint."""
        for i, part in enumerate(self.modules):
            for name, prm in part.named_parameters():
                yield ("tok_embeddings.weight" if self._is_tied_head(i, name) else name), i, name, prm

    def full_tensor(self, name: str, part_index: int, t: torch.Tensor) -> torch.Tensor:
        """The whole tensor (gathered over FSDP shards and TP cuts) on the CPU."""
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        if self.is_expert(part_index, name):
            pieces = [torch.empty_like(t) for _ in range(self.dims.ep)]
            dist.all_gather(pieces, t.contiguous(), group=self.ep_group)
            t = torch.cat(pieces, dim=0)
        dim = self.tp_info[part_index].shard_dim.get(name)
        if dim is not None:
            pieces = [torch.empty_like(t) for _ in range(self.dims.tp)]
            dist.all_gather(pieces, t.contiguous(), group=self.tp_group)
            t = torch.cat(pieces, dim=dim)
        return t.detach().cpu()

    def full_shape(self, name: str, part_index: int, prm) -> tuple[int, ...]:
        shape = list(prm.shape)  # a DTensor reports its global (FSDP-unsharded) shape
        dim = self.tp_info[part_index].shard_dim.get(name)
        if dim is not None:
            shape[dim] *= self.dims.tp
        if self.is_expert(part_index, name):
            shape[0] *= self.dims.ep
        return tuple(shape)

    def local_from_full(self, name: str, part_index: int, full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """This rank's piece of a full tensor, placed like `like` (a plain tensor or an FSDP DTensor)."""
        dim = self.tp_info[part_index].shard_dim.get(name)
        if dim is not None:
            full = full.chunk(self.dims.tp, dim=dim)[self.tp_rank]
        if self.is_expert(part_index, name):
            full = full.chunk(self.dims.ep, dim=0)[self.ep_rank]
        full = full.to(self.device)
        if hasattr(like, "device_mesh"):
            from torch.distributed.tensor import distribute_tensor

            return distribute_tensor(full.contiguous(), like.device_mesh, like.placements)
        return full.contiguous()

    # ---- collectives the engine needs -----------------------------------------------------------
    def dp_mean(self, value: float) -> float:
        """Mean of a per-rank number over the data-parallel ranks."""
        if self.dims.dp == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=self.dp_group)
        return float(t) / self.dims.dp

    def barrier(self) -> None:
        if self.dims.world_size > 1:
            dist.barrier()


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def parallelize(model: nn.Module, dims: ParallelDims, layout: Layout, *, device: torch.device,
                compile: bool = False) -> Parts:
    """This rank's parts of `model` under `layout` (checked, its split set when pp > 1) on the mesh of `dims`."""
    if ParallelDims.from_layout(layout, dims.world_size) != dims:
        raise ParallelError(f"dims {dims} do not describe the layout {layout.short()}")
    parts = Parts([model], [0], dims, layout, device, model.cfg)
    if dims.world_size > 1:
        _join_mesh(parts, device)
    if layout.pp > 1:
        ranges = stage_layers(layout.split)
        pp_rank = parts.mesh.get_coordinate()[0]
        parts.stage_ids = [pp_rank + k * layout.pp for k in range(layout.vpp)]
        parts.modules = [build_stage_part(model, ranges[i], i == 0, i == layout.stages - 1)
                         for i in parts.stage_ids]
    for part in parts.modules:
        parts.expert_names.append(set(apply_expert_parallel(part, parts.ep_group, parts.ep_rank, layout.ep))
                                  if layout.ep > 1 else set())
        parts.tp_info.append(apply_tensor_parallel(part, parts.tp_group, layout.sp) if layout.tp > 1
                             else TensorParallelInfo())
        apply_recompute(part, layout.recompute, layout.recompute_every)
        if compile:
            for block in part.layers.values():
                block.compile()
        part.to(device)
    if parts.fsdp:
        mesh = parts.mesh["dp_replicate", "dp_shard"] if dims.dp_replicate > 1 else parts.mesh["dp_shard"]
        parts.expert_fsdp = layout.ep > 1 and dims.dp // dims.ep > 1
        for part, experts in zip(parts.modules, parts.expert_names, strict=True):
            # expert weights stay out of the dense FSDP: ep splits them already; with dp > ep they get their
            # own FSDP over ep_dp (the ranks holding the same experts), else sync_grads reduces them
            if parts.expert_fsdp:
                from torch.distributed.fsdp import fully_shard

                for _, layer in moe_layers(part):
                    fully_shard(layer.experts, mesh=parts.ep_dp_mesh, reshard_after_forward=layout.zero == 3)
            ignored = {p for n, p in part.named_parameters() if n in experts}
            apply_fsdp(part, mesh, reshard_after_forward=layout.zero == 3, ignored=ignored)
    elif layout.zero == 1:
        parts.owners = _zero1_owners(parts)
    if layout.zero == 1 and layout.ep > 1 and dims.dp // dims.ep > 1:
        parts.expert_owners = _expert_owners(parts)
    return parts


def _join_mesh(parts: Parts, device: torch.device) -> None:
    dims = parts.dims
    parts.rank = dist.get_rank()
    parts.mesh = mesh = build_mesh(dims, device.type)
    parts.tp_group = mesh["tp"].get_group()
    parts.pp_group = mesh["pp"].get_group()
    parts.dp_shard_group = mesh["dp_shard"].get_group()
    parts.dp_group = _group_over(parts, ("dp_replicate", "dp_shard"))
    if dims.pp > 1 and parts.model_cfg.tie_embeddings:
        parts.tie_group = _tie_group(parts)
    if dims.ep > 1:
        expert_mesh = build_expert_mesh(dims, mesh)
        parts.ep_group = expert_mesh["ep"].get_group()
        parts.ep_dp_mesh = expert_mesh["ep_dp"]
        parts.ep_dp_group = parts.ep_dp_mesh.get_group()
        parts.ep_rank = expert_mesh.get_local_rank("ep")
        parts.ep_dp_rank = expert_mesh.get_local_rank("ep_dp")


def _zero1_owners(parts: Parts) -> list[int | None]:
    """ZeRO-1 partition of the non-expert parameters over dp_shard; expert parameters: None (every holder)."""
    flags = [parts.is_expert(i, name) for i, part in enumerate(parts.modules) for name, _ in part.named_parameters()]
    named = parts.named
    shared = [item for item, expert in zip(named, flags, strict=True) if not expert]
    owners = iter(partition_params(shared, parts.dims.dp_shard))
    return [None if expert else next(owners) for expert in flags]


def _expert_owners(parts: Parts) -> list[int | None]:
    """ZeRO-1 for the experts: their optimizer state partitioned over ep_dp (the dp / ep ranks holding the same
    experts; the same partition on every rank of an ep group); None for the rest of the model."""
    flags = [parts.is_expert(i, name) for i, part in enumerate(parts.modules) for name, _ in part.named_parameters()]
    experts = [item for item, expert in zip(parts.named, flags, strict=True) if expert]
    owners = iter(partition_params(experts, parts.dims.dp // parts.dims.ep))
    return [next(owners) if expert else None for expert in flags]


def _group_over(parts: Parts, vary: tuple[str, ...]):
    """The process group of this rank over the mesh axes in `vary` (all ranks create all groups)."""
    names = list(parts.mesh.mesh_dim_names)
    grid = parts.mesh.mesh
    keep = [i for i, n in enumerate(names) if n not in vary]
    moved = grid.permute(*keep, *[names.index(v) for v in vary])
    flat = moved.reshape(-1, int(torch.tensor([grid.shape[names.index(v)] for v in vary]).prod()))
    mine = None
    for ranks in flat.tolist():
        group = dist.new_group(ranks)
        if parts.rank in ranks:
            mine = group
    return mine


def _tie_group(parts: Parts):
    """Groups {first stage, last stage} with the same dp/tp coordinates: they share the tied embedding."""
    grid = parts.mesh.mesh  # [pp, dr, ds, tp]
    mine = None
    for dr in range(grid.shape[1]):
        for ds in range(grid.shape[2]):
            for t in range(grid.shape[3]):
                ranks = [int(grid[0, dr, ds, t]), int(grid[-1, dr, ds, t])]
                group = dist.new_group(ranks)
                if parts.rank in ranks:
                    mine = group
    return mine
