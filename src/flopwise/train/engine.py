"""The one training engine: model parts, optimizer, loss, forward/backward, evaluation and checkpoints.

One process on one device is a world of one with one part; every other layout is the same code on the
parts `flopwise.parallel.parallelize` returns for this rank. The trainer (flopwise.train.trainer) owns the
loop, the data, the schedule and the loss guard and talks to the engine only through this interface:

    engine = Engine(job, accelerator=None)   # resolve and check the layout, build and parallelize the model
    loss = engine.forward_backward(inputs, targets, eod_id)  # this rank's global batch slice; mean loss
    norm = engine.clip_and_step(lr)          # clip the global gradient norm, AdamW step; the pre-clip norm
    engine.zero_grad()                       # drop gradients of a step the loss guard refused
    loss = engine.eval_loss(inputs, targets, eod_id)
    engine.save(directory) / engine.load(directory, with_optimizer=True)
    engine.peak_memory() -> (bytes, label); engine.barrier(); engine.close()
    engine.layout (the checked flopwise.layout.Layout), engine.plan (the planner's Plan for it, or None),
    engine.data_rank / engine.data_world (which slice of each global batch this rank reads),
    engine.is_logging_rank, engine.rank, engine.world_size, engine.device, engine.model, engine.named.

Checkpoints (torch.distributed.checkpoint) hold full tensors under the single-device model's parameter
names, model and AdamW state (duplicates across ranks are written once): any layout loads them, one process
and `flopwise export` included. Every rank materialises full tensors of its own parts while saving and
loading, which is fine up to a few billion parameters per stage."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from flopwise.errors import CheckpointError, ConfigError
from flopwise.hardware import CATALOGUE, Accelerator, detect, merge_measured
from flopwise.models import Transformer, document_segments
from flopwise.models.config import ModelConfig
from flopwise.models.moe import set_aux_loss_scale
from flopwise.parallel.collectives import vocab_parallel_cross_entropy
from flopwise.parallel.dims import ParallelDims
from flopwise.parallel.distributed import close_distributed, init_distributed, launched
from flopwise.parallel.parallelize import parallelize
from flopwise.parallel.pipeline import build_schedule, pipeline_forward, pipeline_train_step
from flopwise.train import forecast
from flopwise.train.config import JobConfig, resolve_layout
from flopwise.train.signals import reraise_stop


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {name!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.device = {name!r}: flopwise trains on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r}: CUDA is not available on this machine")
    return device


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPU by default (fp32 master weights); fp32 on CPU."""
    if dtype == "bf16" or (dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def refuse_tf32(dtype: str, device: torch.device, accelerator: Accelerator | None = None) -> None:
    """ConfigError where train.dtype = 'tf32' cannot run: off a GPU, or on a catalogue GPU without TF32 tensor cores."""
    if dtype != "tf32":
        return
    if device.type != "cuda":
        raise ConfigError(f"train.dtype = 'tf32': TF32 matmuls run on NVIDIA GPUs (Ampere and newer); this run is on "
                          f"{device.type}: use fp32")
    if accelerator is not None and accelerator.name in CATALOGUE and accelerator.tf32_peak_flops <= 0:
        raise ConfigError(f"train.dtype = 'tf32': {accelerator.name} has no TF32 tensor cores (Ampere and newer "
                          "have): use fp32")


def matmul_precision(dtype: str, device: torch.device) -> tuple[str, str | None]:
    """(the planner's name for the precision the run's matmuls take: bf16 | fp32 | tf32, the fp32 matmul setting its
    steps run under on a GPU: 'high' = TF32, 'highest' = IEEE; None on a CPU)."""
    refuse_tf32(dtype, device)
    setting = ("high" if dtype == "tf32" else "highest") if device.type == "cuda" else None
    if autocast_dtype(dtype, device) is not None:
        return "bf16", setting
    return ("tf32" if dtype == "tf32" else "fp32"), setting


@contextlib.contextmanager
def fp32_matmuls(setting: str | None):
    """torch's process-wide fp32 matmul setting as `setting` for the block, then as it was (None: left alone), so
    engines of different dtypes in one process, and the caller's own setting, do not leak into one another."""
    if setting is None:
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(setting)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy, computed in fp32."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def build_optimizer(params, job: JobConfig) -> torch.optim.AdamW:
    """AdamW over `params`; weight decay on matrices only (norm weights and biases are not decayed); the kernel as
    train.optimizer says (`fused_adamw`)."""
    params = list(params)
    decay, no_decay = [], []
    for param in params:
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    t = job.train
    groups = [{"params": part, "weight_decay": wd} for params_, wd in ((decay, t.weight_decay), (no_decay, 0.0))
              for part in _by_tensor_kind(params_)]
    fused = fused_adamw(t.optimizer, {p.device.type for p in params})
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=1e-8, fused=fused, foreach=not fused)


def fused_adamw(setting: str, device_types: set[str]) -> bool:
    """Whether AdamW takes PyTorch's fused kernel: as `setting` (train.optimizer) says, and for 'auto' on a GPU.

    The fused kernel reads and writes each parameter's master weight, moments and gradient once (about 28-30 bytes
    per parameter, plan/cost.py's OPTIMIZER_BYTES_PER_PARAM); foreach chains about ten elementwise passes, 2.5x the
    time on an H200 (benchmarks/RESULTS.md, "Kernels on an H200"). On a CPU 'auto' keeps foreach: the planner's CPU
    calibration was fitted to its step times."""
    if setting == "auto":
        return "cuda" in device_types
    return setting == "fused"


def loaded_step(optimizer: torch.optim.Optimizer, step: torch.Tensor, prm) -> torch.Tensor:
    """A checkpoint's AdamW step count in the form `optimizer` keeps it for `prm`: the fused (and capturable)
    kernels read it as an fp32 tensor on the parameter's device, the foreach one as a CPU tensor (the policy of
    torch.optim.Optimizer.load_state_dict, which the engine's own loading bypasses)."""
    group = next((g for g in optimizer.param_groups if any(p is prm for p in g["params"])), optimizer.defaults)
    if group.get("fused") or group.get("capturable"):
        return step.to(dtype=torch.float32, device=prm.device)
    return step.clone()


def _by_tensor_kind(params: list) -> list[list]:
    """Plain tensors and DTensors (FSDP) in separate groups: one foreach AdamW call cannot mix them, and
    expert weights under ep stay plain beside FSDP-sharded ones."""
    plain = [p for p in params if not hasattr(p, "device_mesh")]
    sharded = [p for p in params if hasattr(p, "device_mesh")]
    return [g for g in (plain, sharded) if g] or [params]


def build_model(cfg: ModelConfig, seed: int) -> Transformer:
    """The full model, initialised the same way from the same seed on every rank and every layout."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Transformer(cfg)


class Engine:
    def __init__(self, job: JobConfig, accelerator: Accelerator | None = None):
        self.job = job
        self.model_cfg = cfg = job.model_config()
        if launched() or job.parallel.world_size > 1:
            self.device = init_distributed(job.parallel.timeout_s)
            import torch.distributed as dist

            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        else:
            self.device = resolve_device(job.train.device)
            self.rank, self.world_size = 0, 1
        layout, self.microbatches = resolve_layout(job, self.world_size)
        self.amp_dtype = autocast_dtype(job.train.dtype, self.device)
        self.precision, self._fp32_matmuls = matmul_precision(job.train.dtype, self.device)
        accelerator = accelerator or detect(self.device)
        refuse_tf32(job.train.dtype, self.device, accelerator)
        if self.world_size > 1 and accelerator.measured:
            accelerator = _shared_peak(accelerator)
        self.accelerator = accelerator
        local = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world_size)))
        self.cost_model = forecast.cost_model(job, accelerator, self.world_size, local, self.precision)
        self.layout = layout.replace(split=forecast.choose_split(self.cost_model, layout, cfg.layers))
        self.plan = forecast.forecast(self.cost_model, self.layout)
        self.is_logging_rank = self.rank == 0

        dims = ParallelDims.from_layout(self.layout, self.world_size)
        self.parts = parallelize(build_model(cfg, job.train.seed), dims, self.layout, device=self.device,
                                 compile=job.train.compile)
        self.data_rank, self.data_world = self.parts.data_rank, self.layout.dp
        self.micro_batch = self.layout.micro_batch
        modules = self.parts.modules
        self.model = modules[0] if len(modules) == 1 else torch.nn.ModuleList(modules)
        self.named = self.parts.named
        self.optimizer = build_optimizer(self.parts.optimizer_params(), job)
        self._schedule = build_schedule(self.parts, self.microbatches, self._loss) if self.layout.pp > 1 else None

    # -- one step -----------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _loss(self, logits, targets):
        if self.layout.tp > 1:
            info = self.parts.tp_info[-1]
            return vocab_parallel_cross_entropy(logits, targets, info.vocab_start, self.parts.tp_group)
        return lm_loss(logits, targets)

    def _segments(self, inputs, eod_id):
        return document_segments(inputs, eod_id) if eod_id is not None and self.job.train.doc_mask else None

    def forward_backward(self, inputs, targets, eod_id=None) -> float:
        """Accumulate gradients over the micro-batches of this rank's slice; return the global mean loss."""
        for part in self.parts.modules:
            part.train()
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        segments = self._segments(inputs, eod_id)
        n_micro = self.microbatches if self._schedule is not None else inputs.shape[0] // self.micro_batch
        # MoE auxiliary losses get the main loss's scaling: 1 / micro-batches here, or 1 under a pipeline
        # schedule, which divides every gradient by the micro-batch count after its backward (scale_grads)
        aux_scale = 1.0 if self._schedule is not None else 1.0 / n_micro
        for part in self.parts.modules:
            set_aux_loss_scale(part, aux_scale)
        with fp32_matmuls(self._fp32_matmuls):
            local = self._accumulate(inputs, targets, segments)
        self.parts.sync_grads()
        return self.parts.dp_mean(local)

    def _accumulate(self, inputs, targets, segments) -> float:
        """Forward and backward over this rank's micro-batches; the rank's mean loss."""
        if self._schedule is not None:
            with self._autocast():
                local = pipeline_train_step(self.parts, self._schedule, inputs, targets, segments)
        else:
            micro = self.micro_batch
            n = inputs.shape[0] // micro
            # summed on the device in float64 (the same arithmetic as Python floats) and read once: a read per
            # micro-batch would make the host wait for each backward before queueing the next forward
            total = torch.zeros((), dtype=torch.float64, device=self.device)
            for i in range(n):
                sl = slice(i * micro, (i + 1) * micro)
                with self._autocast():
                    logits = self.model(inputs[sl], segments[sl] if segments is not None else None)
                    loss = self._loss(logits, targets[sl])
                (loss / n).backward()
                total += loss.detach().double() / n
            local = total.item()
        return local

    def clip_and_step(self, lr: float) -> float:
        """Clip the global gradient norm to train.grad_clip, step at `lr`; return the pre-clip norm."""
        norm = self.parts.grad_norm()
        clip = self.job.train.grad_clip
        if clip > 0:
            coef = clip / (norm + 1e-6)
            grads = self.parts.local_grads()
            if coef < 1.0 and grads:  # a rank may hold no gradient (an empty stage); foreach refuses an empty list
                torch._foreach_mul_(grads, coef)  # a few batched launches, not one per tensor
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.parts.after_step()
        self.zero_grad()
        return norm

    def zero_grad(self) -> None:
        for _, prm in self.named:
            prm.grad = None

    @torch.no_grad()
    def eval_loss(self, inputs, targets, eod_id=None) -> float:
        for part in self.parts.modules:
            part.eval()
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        segments = self._segments(inputs, eod_id)
        micro = self.micro_batch
        losses = []
        for i in range(inputs.shape[0] // micro):
            sl = slice(i * micro, (i + 1) * micro)
            seg = segments[sl] if segments is not None else None
            with fp32_matmuls(self._fp32_matmuls), self._autocast():
                if self._schedule is None:
                    losses.append(self._loss(self.model(inputs[sl], seg), targets[sl]).item())
                else:
                    y = targets[sl]
                    losses.append(pipeline_forward(self.parts, inputs[sl], seg, lambda out, y=y: self._loss(out, y).item()))
        return self.parts.dp_mean(sum(losses) / len(losses))

    # -- checkpoints --------------------------------------------------------------------------
    def save(self, directory) -> None:
        parts, model_sd, optim_state = self.parts, {}, {}
        for name, i, prm in parts.full_items():
            full = parts.full_tensor(name, i, prm.data if not hasattr(prm, "full_tensor") else prm)
            model_sd[name] = full
            if name == "tok_embeddings.weight" and self.model_cfg.tie_embeddings:
                model_sd["output.weight"] = full
            state = self.optimizer.state.get(prm)
            if state:
                optim_state[name] = {k: (parts.full_tensor(name, i, v) if torch.is_tensor(v) and v.dim() > 0 else v)
                                     for k, v in state.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save({"model": model_sd, "optim": {"state": optim_state}}, checkpoint_id=str(directory))
        parts.barrier()

    def load(self, directory, *, with_optimizer: bool = True) -> None:
        parts, wanted_model, wanted_optim, targets = self.parts, {}, {}, []
        owned = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        for key, i, name, prm in parts.load_targets():
            shape = parts.full_shape(name, i, prm)
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
                prm.copy_(parts.local_from_full(name, i, state["model"][key], prm))
                if key in wanted_optim:
                    saved = state["optim"]["state"][key]
                    self.optimizer.state[prm] = {
                        "step": loaded_step(self.optimizer, saved["step"], prm),
                        "exp_avg": parts.local_from_full(name, i, saved["exp_avg"], prm),
                        "exp_avg_sq": parts.local_from_full(name, i, saved["exp_avg_sq"], prm),
                    }

    # -- misc -----------------------------------------------------------------------------------
    def barrier(self) -> None:
        self.parts.barrier()

    def peak_memory(self) -> tuple[float, str]:
        return peak_memory(self.device)

    def close(self) -> None:
        close_distributed()


def _shared_peak(accelerator: Accelerator) -> Accelerator:
    """A measured (CPU) accelerator merged over the ranks: each rank times it while others start up, so their own
    figures differ; the best peak keeps MFU at most 100%, and one merge (hardware.merge_measured) gives every rank
    the same plan."""
    import torch.distributed as dist

    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, accelerator)
    return merge_measured(ranks, best_peak=True)


def dcp_load(state: dict, directory) -> None:
    """Fill `state` in place from a DCP checkpoint; any failure becomes one CheckpointError line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load(state, checkpoint_id=str(directory))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # DCP's CheckpointException derives from BaseException
        reraise_stop(exc)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load checkpoint {directory}: {reason[:300]}") from None


def load_engine_state(model: torch.nn.Module, optimizer, directory: Path) -> None:
    """Load model (and optimizer) state from a DCP checkpoint directory into a single-device model, whatever
    layout saved it (export and generation use it)."""
    model_sd, optim_sd = get_state_dict(model, optimizer) if optimizer is not None else (get_state_dict(model, [])[0], None)
    # Optimizer hyper-parameters come from the config, not the checkpoint: request only the state tensors.
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


def build_engine(job: JobConfig, accelerator: Accelerator | None = None) -> Engine:
    return Engine(job, accelerator)
