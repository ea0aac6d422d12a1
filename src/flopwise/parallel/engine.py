"""ParallelEngine: the trainer's engine for any mix of data (replicate / ZeRO-1/2/3 / hybrid), tensor
(+ sequence) and pipeline (GPipe / 1F1B / interleaved) parallelism, on gloo (CPU) or NCCL (GPU).

Every rank builds the full model from the seed, then keeps its pipeline stage(s), shards them for tensor
parallelism, wraps activation checkpointing and finally FSDP2 for ZeRO-2/3: so every layout starts from
the weights the single-device engine starts from, and the loss curves can be compared step by step.

Checkpoints hold full (unsharded) tensors under the single-device model's parameter names, written with
torch.distributed.checkpoint (duplicates across ranks are written once): any layout loads them, the
single-device engine and `flopwise export` included. Every rank materialises full tensors of its own
parts while saving and loading, which is fine up to a few billion parameters per stage; sharded DTensor
checkpoints are the next step for larger models."""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.utils.checkpoint import checkpoint as activation_checkpoint

import flopwise
from flopwise.errors import ParallelError
from flopwise.models import document_segments
from flopwise.parallel import collectives as C
from flopwise.parallel.data_parallel import (
    all_reduce_grads,
    apply_fsdp,
    broadcast_from_owners,
    partition_params,
)
from flopwise.parallel.dims import build_mesh, validate_job_layout
from flopwise.parallel.pipeline import balanced_split, build_stage_part, parse_split, stage_estimates, stage_layers
from flopwise.parallel.tensor import TensorParallelInfo, apply_tensor_parallel
from flopwise.train.config import JobConfig
from flopwise.train.engine import autocast_dtype, build_model, build_optimizer, dcp_load, lm_loss, peak_memory

log = logging.getLogger(__name__)


def init_distributed(timeout_s: int) -> torch.device:
    """Join the process group started by torchrun; check that every rank runs the same versions."""
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise ParallelError("a parallel layout needs several processes: run `flopwise train --nproc N ...` or torchrun")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    versions = [None] * dist.get_world_size()
    dist.all_gather_object(versions, (torch.__version__, flopwise.__version__))
    if len(set(versions)) > 1:
        detail = ", ".join(f"rank {r}: torch {t} flopwise {f}" for r, (t, f) in enumerate(versions))
        raise ParallelError(f"ranks run different versions ({detail}); install the same everywhere")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _wrap_activation_checkpoint(part, mode: str, every: int) -> None:
    """Recompute blocks in backward: all of them (full) or every k-th (selective). The forward is replaced
    on the instance, so parameter names stay those of the single-device model."""
    if mode == "none":
        return
    for key, block in part.layers.items():
        if mode == "full" or int(key) % every == 0:
            original = block.forward
            block.forward = functools.partial(activation_checkpoint, original, use_reentrant=False)


class ParallelEngine:
    def __init__(self, job: JobConfig):
        self.job = job
        p = job.parallel
        self.device = init_distributed(p.timeout_s)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.model_cfg = cfg = job.model_config()
        self.dims, self.local_batch, self.micro_batch = validate_job_layout(job, self.world_size)
        dims = self.dims
        self.layout = dims.describe() + (f"-zero{p.zero}" if p.zero and dims.dp > 1 else "")
        self.is_logging_rank = self.rank == 0
        self.amp_dtype = autocast_dtype(job.train.dtype, self.device)

        self.mesh = build_mesh(dims, self.device.type)
        pp_rank, dr, ds, _ = self.mesh.get_coordinate()
        self.pp_rank = pp_rank
        self.data_rank, self.data_world = dr * dims.dp_shard + ds, dims.dp
        self.tp_group = self.mesh["tp"].get_group()
        self.pp_group = self.mesh["pp"].get_group()
        self.dp_shard_group = self.mesh["dp_shard"].get_group()
        self.dp_group = self._new_groups(vary=("dp_replicate", "dp_shard"))
        self.tie_group = self._tie_group() if dims.pp > 1 and cfg.tie_embeddings else None

        full = build_model(cfg, job.train.seed)
        self.stage_ids, self.parts = self._build_parts(full)
        self.tp_info: list[TensorParallelInfo] = []
        for part in self.parts:
            self.tp_info.append(apply_tensor_parallel(part, self.tp_group, p.sequence_parallel) if dims.tp > 1
                                else TensorParallelInfo())
            _wrap_activation_checkpoint(part, p.activation_checkpoint, p.ac_every)
            part.to(self.device)
        self.fsdp = p.zero >= 2 and dims.dp > 1
        if self.fsdp:
            fsdp_mesh = self.mesh["dp_replicate", "dp_shard"] if dims.dp_replicate > 1 else self.mesh["dp_shard"]
            for part in self.parts:
                apply_fsdp(part, fsdp_mesh, reshard_after_forward=p.zero == 3)
        self.model = self.parts[0] if len(self.parts) == 1 else torch.nn.ModuleList(self.parts)
        self.named = [(n, prm) for part in self.parts for n, prm in part.named_parameters()]
        self._build_optimizer()
        self._schedule = self._build_schedule() if dims.pp > 1 else None

    # -- construction -------------------------------------------------------------------------
    def _new_groups(self, vary: tuple[str, ...]):
        """The process group of this rank over the mesh axes in `vary` (all ranks create all groups)."""
        names = list(self.mesh.mesh_dim_names)
        grid = self.mesh.mesh
        keep = [i for i, n in enumerate(names) if n not in vary]
        moved = grid.permute(*keep, *[names.index(v) for v in vary])
        flat = moved.reshape(-1, int(torch.tensor([grid.shape[names.index(v)] for v in vary]).prod()))
        mine = None
        for ranks in flat.tolist():
            group = dist.new_group(ranks)
            if self.rank in ranks:
                mine = group
        return mine

    def _tie_group(self):
        """Groups {first stage, last stage} with the same dp/tp coordinates: they share the tied embedding."""
        grid = self.mesh.mesh  # [pp, dr, ds, tp]
        mine = None
        for dr in range(grid.shape[1]):
            for ds in range(grid.shape[2]):
                for t in range(grid.shape[3]):
                    ranks = [int(grid[0, dr, ds, t]), int(grid[-1, dr, ds, t])]
                    group = dist.new_group(ranks)
                    if self.rank in ranks:
                        mine = group
        return mine

    def _build_parts(self, full):
        p, cfg = self.job.parallel, self.model_cfg
        if self.dims.pp == 1:
            return [0], [full]
        stages = self.dims.pp * p.pp_chunks
        n_micro = self.local_batch // self.micro_batch
        split = parse_split(p.pp_layers, cfg.layers, stages) or balanced_split(
            cfg, stages, micro_batch=self.micro_batch, seq=self.job.seq_len, microbatches=n_micro,
            schedule=p.pp_schedule)
        self.split = split
        self.stage_memory = stage_estimates(cfg, split, micro_batch=self.micro_batch, seq=self.job.seq_len,
                                            microbatches=n_micro, schedule=p.pp_schedule, tp=self.dims.tp)
        if self.is_logging_rank:
            log.info("pipeline split %s", split)
        ranges = stage_layers(split)
        ids = [self.pp_rank + k * self.dims.pp for k in range(p.pp_chunks)]
        return ids, [build_stage_part(full, ranges[i], i == 0, i == stages - 1) for i in ids]

    def _build_optimizer(self):
        self.zero1 = self.job.parallel.zero == 1 and self.dims.dp_shard > 1
        if self.zero1:
            self.owners = partition_params(self.named, self.dims.dp_shard)
            my = self.mesh.get_coordinate()[2]
            owned = [prm for (_, prm), o in zip(self.named, self.owners, strict=True) if o == my]
            self.optimizer = build_optimizer(_ParamHolder(owned), self.job)
        else:
            self.optimizer = build_optimizer(_ParamHolder([prm for _, prm in self.named]), self.job)

    def _build_schedule(self):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

        p = self.job.parallel
        total = self.dims.pp * p.pp_chunks
        stages = [PipelineStage(part, i, total, self.device, group=self.pp_group)
                  for part, i in zip(self.parts, self.stage_ids, strict=True)]
        n_micro = self.local_batch // self.micro_batch
        loss_fn = self._loss
        if p.pp_schedule == "interleaved":
            return ScheduleInterleaved1F1B(stages, n_micro, loss_fn=loss_fn)
        cls = ScheduleGPipe if p.pp_schedule == "gpipe" else Schedule1F1B
        return cls(stages[0], n_micro, loss_fn=loss_fn)

    # -- one step -----------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _loss(self, logits, targets):
        if self.dims.tp > 1:
            return C.vocab_parallel_cross_entropy(logits, targets, self.tp_info[-1].vocab_start, self.tp_group)
        return lm_loss(logits, targets)

    def _segments(self, inputs, eod_id):
        return document_segments(inputs, eod_id) if eod_id is not None and self.job.train.doc_mask else None

    def forward_backward(self, inputs, targets, eod_id=None) -> float:
        for part in self.parts:
            part.train()
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        segments = self._segments(inputs, eod_id)
        if self._schedule is not None:
            local = self._pipeline_step(inputs, targets, segments)
        else:
            micro = self.micro_batch
            n = inputs.shape[0] // micro
            local = 0.0
            for i in range(n):
                sl = slice(i * micro, (i + 1) * micro)
                with self._autocast():
                    logits = self.model(inputs[sl], segments[sl] if segments is not None else None)
                    loss = self._loss(logits, targets[sl])
                (loss / n).backward()
                local += loss.item() / n
        self._sync_grads()
        return self._global_loss(local)

    def _pipeline_step(self, inputs, targets, segments) -> float:
        losses: list[torch.Tensor] = []
        kwargs = {"segments": segments} if segments is not None else {}
        with self._autocast():
            self._schedule.step(inputs, target=targets, losses=losses, **kwargs)
        has_last = self.pp_rank == (self.dims.pp * self.job.parallel.pp_chunks - 1) % self.dims.pp
        value = torch.tensor([sum(x.item() for x in losses) / len(losses) if has_last and losses else 0.0],
                             device=self.device)  # NCCL collectives need device tensors
        last_rank = dist.get_global_rank(self.pp_group, self.dims.pp - 1)
        dist.broadcast(value, src=last_rank, group=self.pp_group)
        return float(value)

    def _global_loss(self, local: float) -> float:
        value = torch.tensor([local], dtype=torch.float64, device=self.device)
        if self.dims.dp > 1:
            dist.all_reduce(value, group=self.dp_group)
            value /= self.dims.dp
        return float(value)

    @staticmethod
    def _local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    def _sync_grads(self):
        """Partial TP gradients summed; data-parallel averaging (FSDP does its own); tied embedding summed
        between the first and last pipeline stage."""
        if self.dims.tp > 1:
            for part, info in zip(self.parts, self.tp_info, strict=True):
                params = dict(part.named_parameters())
                grads = [self._local(params[n].grad) for n in info.partial_grads if params[n].grad is not None]
                for g in grads:
                    dist.all_reduce(g, group=self.tp_group)
        if not self.fsdp and self.dims.dp > 1:
            all_reduce_grads([prm for _, prm in self.named], self.dp_group)
        if self.tie_group is not None:
            tied = self._tied_param()
            if tied is not None and tied.grad is not None:
                dist.all_reduce(self._local(tied.grad), group=self.tie_group)

    def _tied_param(self):
        """This rank's copy of the tied embedding: on the first stage the embedding, on the last the head."""
        for part in self.parts:
            if part.tok_embeddings is not None:
                return part.tok_embeddings.weight
            if part.output is not None:
                return part.output.weight
        return None

    def _replication(self, name: str, part_index: int) -> float:
        """How many ranks hold the same gradient values for this parameter (counted once in the norm)."""
        part = self.parts[part_index]
        if self.dims.pp > 1 and name == "output.weight" and part.tok_embeddings is None and self.model_cfg.tie_embeddings:
            return float("inf")  # the head copy of the tied embedding: the first stage counts it
        r = 1
        if name not in self.tp_info[part_index].shard_dim:
            r *= self.dims.tp
        r *= self.dims.dp_replicate if self.fsdp else self.dims.dp
        return r

    def clip_and_step(self, lr: float) -> float:
        total = torch.zeros(1, dtype=torch.float64, device=self.device)
        grads = []
        for i, part in enumerate(self.parts):
            for name, prm in part.named_parameters():
                if prm.grad is None:
                    continue
                g = self._local(prm.grad)
                grads.append(g)
                total += g.double().pow(2).sum() / self._replication(name, i)
        dist.all_reduce(total)
        norm = float(total.sqrt())
        clip = self.job.train.grad_clip
        if clip > 0:
            coef = min(1.0, clip / (norm + 1e-6))
            if coef < 1.0:
                for g in grads:
                    g.mul_(coef)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        if self.zero1:
            broadcast_from_owners(self.named, self.owners, self.dp_shard_group)
        self.zero_grad()
        return norm

    def zero_grad(self):
        for _, prm in self.named:
            prm.grad = None

    @torch.no_grad()
    def eval_loss(self, inputs, targets, eod_id=None) -> float:
        for part in self.parts:
            part.eval()
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        segments = self._segments(inputs, eod_id)
        micro = self.micro_batch
        losses = []
        for i in range(inputs.shape[0] // micro):
            sl = slice(i * micro, (i + 1) * micro)
            seg = segments[sl] if segments is not None else None
            with self._autocast():
                if self._schedule is None:
                    losses.append(self._loss(self.model(inputs[sl], seg), targets[sl]).item())
                else:
                    losses.append(self._pipeline_eval(inputs[sl], targets[sl], seg))
        return self._global_loss(sum(losses) / len(losses))

    def _pipeline_eval(self, inputs, targets, segments) -> float:
        """Forward only, stage by stage with point-to-point sends (the schedules always run backward)."""
        total = self.dims.pp * self.job.parallel.pp_chunks
        owner = [dist.get_global_rank(self.pp_group, s % self.dims.pp) for s in range(total)]
        shape = (inputs.shape[0], inputs.shape[1], self.model_cfg.hidden)
        loss = torch.zeros(1, device=self.device)
        for s in range(total):
            if owner[s] != self.rank:
                continue
            part = self.parts[self.stage_ids.index(s)]
            if s == 0:
                x = inputs
            else:
                x = torch.empty(shape, device=self.device)
                dist.recv(x, src=owner[s - 1])
            out = part(x, segments)
            if s == total - 1:
                loss[0] = self._loss(out, targets).item()
            else:
                dist.send(out.float().contiguous(), dst=owner[s + 1])
        dist.broadcast(loss, src=owner[-1], group=self.pp_group)
        return float(loss)

    # -- checkpoints --------------------------------------------------------------------------
    def _full_tensor(self, name: str, part_index: int, t: torch.Tensor) -> torch.Tensor:
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        dim = self.tp_info[part_index].shard_dim.get(name)
        if dim is not None:
            parts = [torch.empty_like(t) for _ in range(self.dims.tp)]
            dist.all_gather(parts, t.contiguous(), group=self.tp_group)
            t = torch.cat(parts, dim=dim)
        return t.detach().cpu()

    def _local_from_full(self, name: str, part_index: int, full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        dim = self.tp_info[part_index].shard_dim.get(name)
        if dim is not None:
            full = full.chunk(self.dims.tp, dim=dim)[self.mesh.get_coordinate()[3]]
        full = full.to(self.device)
        if hasattr(like, "device_mesh"):
            from torch.distributed.tensor import distribute_tensor

            return distribute_tensor(full.contiguous(), like.device_mesh, like.placements)
        return full.contiguous()

    def _is_tied_head(self, part_index: int, name: str) -> bool:
        part = self.parts[part_index]
        return self.dims.pp > 1 and self.model_cfg.tie_embeddings and name == "output.weight" and part.tok_embeddings is None

    def save(self, directory) -> None:
        model_sd, optim_state = {}, {}
        for i, part in enumerate(self.parts):
            for name, prm in part.named_parameters():
                full = self._full_tensor(name, i, prm.data if not hasattr(prm, "full_tensor") else prm)
                if self._is_tied_head(i, name):
                    continue  # the first stage saves the tied embedding
                model_sd[name] = full
                if name == "tok_embeddings.weight" and self.model_cfg.tie_embeddings:
                    model_sd["output.weight"] = full
                state = self.optimizer.state.get(prm)
                if state:
                    optim_state[name] = {k: (self._full_tensor(name, i, v) if torch.is_tensor(v) and v.dim() > 0
                                             else v) for k, v in state.items()}
        payload = {"model": model_sd, "optim": {"state": optim_state}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save(payload, checkpoint_id=str(directory))
            dist.barrier()

    def load(self, directory, *, with_optimizer: bool = True) -> None:
        wanted_model, wanted_optim, targets = {}, {}, []
        owned = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        for i, part in enumerate(self.parts):
            for name, prm in part.named_parameters():
                key = "tok_embeddings.weight" if self._is_tied_head(i, name) else name
                shape = self._full_shape(name, i, prm)
                wanted_model[key] = torch.empty(shape)
                targets.append((i, name, key, prm))
                if with_optimizer and id(prm) in owned:
                    wanted_optim[key] = {"step": torch.zeros(()), "exp_avg": torch.empty(shape),
                                         "exp_avg_sq": torch.empty(shape)}
        state = {"model": wanted_model}
        if wanted_optim:
            state["optim"] = {"state": wanted_optim}
        dcp_load(state, directory)
        with torch.no_grad():
            for i, name, key, prm in targets:
                prm.copy_(self._local_from_full(name, i, state["model"][key], prm))
                if key in wanted_optim:
                    saved = state["optim"]["state"][key]
                    self.optimizer.state[prm] = {
                        "step": saved["step"].clone(),
                        "exp_avg": self._local_from_full(name, i, saved["exp_avg"], prm),
                        "exp_avg_sq": self._local_from_full(name, i, saved["exp_avg_sq"], prm),
                    }

    def _full_shape(self, name: str, part_index: int, prm) -> tuple[int, ...]:
        shape = list(prm.shape)  # a DTensor reports its global (FSDP-unsharded) shape
        dim = self.tp_info[part_index].shard_dim.get(name)
        if dim is not None:
            shape[dim] *= self.dims.tp
        return tuple(shape)

    # -- misc -----------------------------------------------------------------------------------
    def describe_pipeline(self) -> list[dict] | None:
        if self.dims.pp == 1:
            return None
        return [{"stage": i, "layers": e.layers, "in_flight": e.in_flight,
                 "predicted_bytes": e.total_bytes} for i, e in enumerate(self.stage_memory)]

    def barrier(self) -> None:
        dist.barrier()

    def peak_memory(self):
        return peak_memory(self.device)

    def close(self) -> None:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


class _ParamHolder(torch.nn.Module):
    """Lets build_optimizer (which takes a module) group an explicit list of parameters."""

    def __init__(self, params):
        super().__init__()
        self._list = list(params)

    def parameters(self, recurse: bool = True):
        return iter(self._list)
