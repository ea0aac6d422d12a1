"""The engine owns the model parts, the optimizer and forward/backward; the trainer owns everything else.

`SingleDeviceEngine` runs on one CPU or GPU. `flopwise.parallel` provides an engine with the same
methods for data / tensor / pipeline parallel layouts; `build_engine` picks one from the config.
Checkpoints use torch.distributed.checkpoint with fully-qualified names for model and optimizer state,
so a checkpoint saved under one layout loads under any other, a single process included.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from flopwise.errors import CheckpointError, ConfigError
from flopwise.models import Transformer, document_segments
from flopwise.models.config import ModelConfig
from flopwise.models.moe import set_aux_loss_scale
from flopwise.train.config import JobConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r}: CUDA is not available on this machine")
    return device


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPU by default (fp32 master weights); fp32 on CPU."""
    if dtype == "bf16" or (dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy, computed in fp32."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def build_optimizer(model: torch.nn.Module, job: JobConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (norm weights and biases are not decayed)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    t = job.train
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=1e-8, fused=False, foreach=True)


def build_model(cfg: ModelConfig, seed: int) -> Transformer:
    """The full model, initialised the same way from the same seed on every rank and every layout."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Transformer(cfg)


class SingleDeviceEngine:
    data_rank = 0
    data_world = 1
    is_logging_rank = True
    layout = "single"

    def __init__(self, job: JobConfig):
        self.job = job
        self.model_cfg = job.model_config()
        self.micro_batch = min(job.train.micro_batch, job.train.global_batch)  # an upper bound, as in parallel
        self.device = resolve_device(job.train.device)
        self.amp_dtype = autocast_dtype(job.train.dtype, self.device)
        self.model = build_model(self.model_cfg, job.train.seed).to(self.device)
        self.optimizer = build_optimizer(self.model, job)
        self._forward = torch.compile(self.model) if job.train.compile else self.model

    # -- one step ------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _segments(self, inputs: torch.Tensor, eod_id: int | None) -> torch.Tensor | None:
        return document_segments(inputs, eod_id) if eod_id is not None and self.job.train.doc_mask else None

    def forward_backward(self, inputs: torch.Tensor, targets: torch.Tensor, eod_id: int | None = None) -> float:
        """Accumulate gradients over micro-batches of this rank's batch; return the mean loss."""
        self.model.train()
        micro = self.micro_batch
        chunks = list(zip(inputs.split(micro), targets.split(micro), strict=True))
        set_aux_loss_scale(self.model, 1.0 / len(chunks))  # MoE auxiliary losses: same scaling as the loss
        total = 0.0
        for x, y in chunks:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._autocast():
                loss = lm_loss(self._forward(x, self._segments(x, eod_id)), y)
            (loss / len(chunks)).backward()
            total += loss.item()
        return total / len(chunks)

    @torch.no_grad()
    def eval_loss(self, inputs: torch.Tensor, targets: torch.Tensor, eod_id: int | None = None) -> float:
        self.model.eval()
        losses = []
        for x, y in zip(inputs.split(self.micro_batch), targets.split(self.micro_batch), strict=True):
            x, y = x.to(self.device), y.to(self.device)
            with self._autocast():
                losses.append(lm_loss(self._forward(x, self._segments(x, eod_id)), y).item())
        return sum(losses) / len(losses)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def clip_and_step(self, lr: float) -> float:
        """Clip the global gradient norm, take one optimizer step at `lr`; return the pre-clip norm."""
        clip = self.job.train.grad_clip
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"), foreach=True)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.zero_grad()
        return float(norm)

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(directory))

    def load(self, directory: Path, *, with_optimizer: bool = True) -> None:
        load_engine_state(self.model, self.optimizer if with_optimizer else None, directory)

    def peak_memory(self) -> tuple[float, str]:
        return peak_memory(self.device)


def dcp_load(state: dict, directory) -> None:
    """Fill `state` in place from a DCP checkpoint; any failure becomes one CheckpointError line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load(state, checkpoint_id=str(directory))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # DCP's CheckpointException derives from BaseException
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load checkpoint {directory}: {reason[:300]}") from None


def load_engine_state(model: torch.nn.Module, optimizer, directory: Path) -> None:
    """Load model (and optimizer) state from a DCP checkpoint directory, whatever layout saved it."""
    model_sd, optim_sd = get_state_dict(model, optimizer) if optimizer is not None else (get_state_dict(model, [])[0], None)
    # Optimizer hyper-parameters come from the config, not the checkpoint: request only the state tensors,
    # so checkpoints written by any engine (which store the state under parameter names) load here.
    groups = optim_sd.pop("param_groups") if optim_sd is not None else None
    state = {"model": model_sd} if optim_sd is None else {"model": model_sd, "optim": optim_sd}
    dcp_load(state, directory)
    if optim_sd is None:
        set_state_dict(model, [], model_state_dict=state["model"], optim_state_dict={})
    else:
        state["optim"]["param_groups"] = groups
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(bytes, label): CUDA peak allocated on a GPU, peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device)), "peak allocated"
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "peak RSS"


def build_engine(job: JobConfig):
    """A single-device engine, or the parallel engine when any degree is above one."""
    if job.parallel.world_size > 1 or _in_distributed_launch():
        from flopwise.parallel.engine import ParallelEngine

        return ParallelEngine(job)
    return SingleDeviceEngine(job)


def _in_distributed_launch() -> bool:
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1
