"""Pipeline parallelism: stage parts cut from the full model, the torch.distributed.pipelining schedules
(GPipe, 1F1B, interleaved 1F1B; Narayanan et al. 2021) and a forward-only pass for evaluation.

The split (layers per stage) comes from the layout: given by the user or chosen by the planner's balanced
split (flopwise.plan.search.balanced_split, Yuan 2.0's non-uniform pipeline); stage s runs on rank s % pp."""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn


def stage_layers(split: tuple[int, ...]) -> list[range]:
    starts = [sum(split[:i]) for i in range(len(split))]
    return [range(s, s + n) for s, n in zip(starts, split, strict=True)]


def build_stage_part(model: nn.Module, layers: range, first: bool, last: bool) -> nn.Module:
    """A copy of the model holding only this stage's blocks (keys keep their global index, so parameter
    names match the single-device model), the embedding on the first stage, norm and head on the last."""
    part = copy.deepcopy(model)
    for key in list(part.layers.keys()):
        if int(key) not in layers:
            del part.layers[key]
    if not last:
        part.norm = None
        part.output = None
    if not first:
        part.tok_embeddings = None
    return part


def build_schedule(parts, microbatches: int, loss_fn):
    """The torch pipelining schedule of the layout's kind over this rank's stage parts."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

    stages = [PipelineStage(part, i, parts.num_stages, parts.device, group=parts.pp_group)
              for part, i in zip(parts.modules, parts.stage_ids, strict=True)]
    if parts.layout.schedule == "interleaved":
        return ScheduleInterleaved1F1B(stages, microbatches, loss_fn=loss_fn)
    cls = ScheduleGPipe if parts.layout.schedule == "gpipe" else Schedule1F1B
    return cls(stages[0], microbatches, loss_fn=loss_fn)


def pipeline_train_step(parts, schedule, inputs, targets, segments) -> float:
    """One forward/backward of every micro-batch through the schedule; the mean loss, on every pp rank."""
    losses: list[torch.Tensor] = []
    kwargs = {"segments": segments} if segments is not None else {}
    schedule.step(inputs, target=targets, losses=losses, **kwargs)
    has_last = parts.num_stages - 1 in parts.stage_ids
    value = torch.tensor([sum(x.item() for x in losses) / len(losses) if has_last and losses else 0.0],
                         device=parts.device)  # NCCL collectives need device tensors
    dist.broadcast(value, src=_stage_owner(parts, parts.num_stages - 1), group=parts.pp_group)
    return float(value)


def pipeline_forward(parts, inputs, segments, last_fn) -> float:
    """Forward only, stage by stage with point-to-point sends (the schedules always run backward); the last
    stage applies `last_fn` to its output (the loss, a float), which every pp rank gets back."""
    total = parts.num_stages
    owner = [_stage_owner(parts, s) for s in range(total)]
    shape = (inputs.shape[0], inputs.shape[1], parts.model_cfg.hidden)
    result = torch.zeros(1, device=parts.device)
    for s in range(total):
        if owner[s] != parts.rank:
            continue
        part = parts.modules[parts.stage_ids.index(s)]
        if s == 0:
            x = inputs
        else:
            x = torch.empty(shape, device=parts.device)
            dist.recv(x, src=owner[s - 1])
        out = part(x, segments)
        if s == total - 1:
            result[0] = last_fn(out)
        else:
            dist.send(out.float().contiguous(), dst=owner[s + 1])
    dist.broadcast(result, src=owner[-1], group=parts.pp_group)
    return float(result)


def _stage_owner(parts, stage: int) -> int:
    """Global rank of this rank's pipeline peer that runs `stage`."""
    return dist.get_global_rank(parts.pp_group, stage % parts.layout.pp)
