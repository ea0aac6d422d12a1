"""Job configuration: dataclass sections, read from TOML, overridable with `--set section.key=value`.

Every wrong value gets one line that names the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import functools
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from flopwise.atomic import atomic_write_text
from flopwise.config_values import SEED_LIMIT, check_number, check_value
from flopwise.errors import ConfigError, LayoutError
from flopwise.layout import Layout, local_batch, parse_split
from flopwise.layout import check as check_layout
from flopwise.models.config import ModelConfig, get_preset
from flopwise.userfiles import read_toml

# AdamW's kernels: PyTorch's fused one (one pass over each parameter's state) or foreach (a chain of elementwise
# passes, 2.5x the time on an H200: benchmarks/RESULTS.md "Kernels on an H200"); auto takes fused on a GPU and foreach
# on a CPU, where the planner's CPU calibration was fitted (train/engine.py build_optimizer)
OPTIMIZER_KERNELS = ("auto", "fused", "foreach")
# the training dtypes: auto (bf16 autocast on a GPU, fp32 on a CPU), fp32 (IEEE matmuls, PyTorch's default), tf32 (fp32
# with TF32 tensor-core matmuls, NVIDIA GPUs from Ampere on), bf16 (autocast over fp32 master weights)
TRAIN_DTYPES = ("auto", "fp32", "tf32", "bf16")


@dataclass
class TrainSection:
    steps: int = 300
    global_batch: int = 16  # sequences per optimizer step, over all data-parallel ranks
    micro_batch: int = 16  # sequences per forward/backward on one rank; accumulation fills the rest
    seq_len: int = 0  # 0: the model's context length
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | tf32 (fp32, TF32 matmuls: a GPU) | bf16
    compile: bool = False
    optimizer: str = "auto"  # AdamW kernel: auto (fused on GPU, foreach on CPU) | fused | foreach
    eval_every: int = 50
    eval_batches: int = 8
    log_every: int = 10
    doc_mask: bool = True  # reset positions, attention and the LFA filter at document boundaries

    def validate(self) -> None:
        _positive(self, "train", ("steps", "global_batch", "micro_batch", "lr", "eval_batches", "log_every"))
        _non_negative(self, "train", ("seq_len", "min_lr", "warmup_steps", "weight_decay", "grad_clip", "eval_every"))
        check_number("train.seed", self.seed, low=0, high=SEED_LIMIT - 1, integer=True)
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"train.{key} = {getattr(self, key)}: must be in [0, 1)")
        if self.min_lr > self.lr:
            raise ConfigError(f"train.min_lr = {self.min_lr}: must not exceed train.lr = {self.lr}")
        if self.dtype not in TRAIN_DTYPES:
            raise ConfigError(f"train.dtype = {self.dtype!r}: must be one of {', '.join(TRAIN_DTYPES)}")
        if self.optimizer not in OPTIMIZER_KERNELS:
            raise ConfigError(f"train.optimizer = {self.optimizer!r}: must be one of {', '.join(OPTIMIZER_KERNELS)}")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"train.device = {self.device!r}: must be auto, cpu, cuda or cuda:N")


@dataclass
class DataSection:
    shards: str = ""  # a shard directory (manifest.json); empty: the embedded demo corpus
    cache_dir: str = ""  # where the demo corpus is prepared once; empty: the data cache (`flopwise data cache ls`)
    verify: bool = False  # hash every shard against the manifest's sha256 before training (sizes: always)

    def validate(self) -> None:
        pass


@dataclass
class CheckpointSection:
    every: int = 100  # steps between checkpoints (0: only at the end)
    keep: int = 2  # most recent checkpoints kept

    def validate(self) -> None:
        _non_negative(self, "checkpoint", ("every",))
        _positive(self, "checkpoint", ("keep",))


@dataclass
class GuardSection:
    enabled: bool = True
    spike_factor: float = 3.0  # a loss above factor x the recent mean is a spike
    window: int = 20  # accepted losses in the running mean
    min_history: int = 5  # no spike verdict before this many accepted losses
    max_consecutive: int = 3  # this many bad steps in a row -> roll back to the last checkpoint
    max_rollbacks: int = 3  # rollbacks to one checkpoint; diverging once more ends the run with an error

    def validate(self) -> None:
        if self.spike_factor <= 1:
            raise ConfigError(f"guard.spike_factor = {self.spike_factor}: must be greater than 1")
        _positive(self, "guard", ("window", "min_history", "max_consecutive", "max_rollbacks"))


@dataclass
class ParallelSection:
    """The parallel layout, in flopwise.layout's vocabulary (the planner's), plus two run settings.

    The degrees multiply to the world size; the sequences per micro-batch come from train.micro_batch."""

    dp: int = 1  # data-parallel degree: every replica and shard
    zero: int = 0  # ZeRO stage over the shard group: 1 optimizer state, 2 + gradients, 3 + parameters (FSDP2)
    dp_shard: int = 0  # ranks per ZeRO shard group; 0: all of dp. Below dp: hybrid sharding
    tp: int = 1
    sp: bool = True  # sequence parallelism with tp > 1
    pp: int = 1
    vpp: int = 1  # model chunks per pipeline rank (interleaved 1F1B when > 1)
    schedule: str = "1f1b"  # gpipe | 1f1b | interleaved
    split: str = "auto"  # "auto" (the planner's balanced split) or layers per stage, e.g. "2,2,3,3,4,4,4,2"
    # none | selective (attention core, Korthikanti) | op (every second matmul and the elementwise work: torchtitan's
    # per-op selective checkpointing) | full (whole blocks)
    recompute: str = "none"
    recompute_every: int = 1  # with full: recompute every k-th block only
    ep: int = 1  # expert parallelism: MoE experts split over groups of ep data-parallel ranks (divides dp)
    cp: int = 1  # context parallelism (not implemented yet)
    microbatches: int = 0  # micro-batches per step and rank; 0: from train.micro_batch (at least 2 x pp if that gives < pp)
    timeout_s: int = 600  # collective timeout: a dead or hung rank ends the job with an error

    def validate(self) -> None:
        _positive(self, "parallel", ("timeout_s",))
        _non_negative(self, "parallel", ("microbatches",))
        try:
            self.layout(micro_batch=1)
        except LayoutError as exc:
            raise LayoutError(f"parallel.{exc}") from None

    def layout(self, micro_batch: int, split: tuple[int, ...] | None = None) -> Layout:
        return Layout(dp=self.dp, zero=self.zero, dp_shard=self.dp_shard, tp=self.tp, sp=self.sp, pp=self.pp,
                      vpp=self.vpp, schedule=self.schedule, split=split, micro_batch=micro_batch,
                      recompute=self.recompute, recompute_every=self.recompute_every, ep=self.ep, cp=self.cp)

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp * self.cp


# [parallel] keys of earlier versions: renamed ones are read under their new name; the two whose meaning
# changed are refused with the new spelling (a checkpoint's saved config, read only for its model, skips them)
_RENAMED = {"sequence_parallel": "sp", "pp_layers": "split", "pp_schedule": "schedule", "pp_chunks": "vpp",
            "pp_microbatches": "microbatches"}
_CHANGED = {
    "dp_replicate": "parallel.dp is the whole data-parallel degree (replicas x shards) and parallel.dp_shard "
                    "the ZeRO shard group inside it",
    "activation_checkpoint": "use parallel.recompute = 'full' (whole blocks; parallel.recompute_every = k for "
                             "every k-th) or 'selective' (the attention core)",
    "ac_every": "use parallel.recompute = 'full' with parallel.recompute_every = k",
}


@dataclass
class JobConfig:
    preset: str = "tiny"
    model: dict = field(default_factory=dict)  # overrides of the preset's ModelConfig fields
    out: str = "runs/demo"
    train: TrainSection = field(default_factory=TrainSection)
    data: DataSection = field(default_factory=DataSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    guard: GuardSection = field(default_factory=GuardSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)

    def validate(self) -> None:
        if not str(self.out).strip():  # an empty --out (an unset $OUT) would be the working directory
            raise ConfigError(f"out = {self.out!r}: give a directory for the run (--out)")
        self.model_config()
        for section in (self.train, self.data, self.checkpoint, self.guard, self.parallel):
            section.validate()

    def model_config(self) -> ModelConfig:
        cfg = get_preset(self.preset)
        return cfg.replace(**self.model) if self.model else cfg

    @property
    def seq_len(self) -> int:
        return self.train.seq_len or self.model_config().seq_len

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTIONS = {f.name: f.type for f in dataclasses.fields(JobConfig)}


def _positive(obj, section: str, keys) -> None:
    for key in keys:
        if getattr(obj, key) <= 0:
            raise ConfigError(f"{section}.{key} = {getattr(obj, key)}: must be positive")


def _non_negative(obj, section: str, keys) -> None:
    for key in keys:
        if getattr(obj, key) < 0:
            raise ConfigError(f"{section}.{key} = {getattr(obj, key)}: must not be negative")


@functools.cache
def _hints(cls) -> dict:
    """A dataclass's field types (evaluating string annotations is slow: once per class)."""
    return typing.get_type_hints(cls)


def _apply(config: JobConfig, key: str, value) -> None:
    parts = key.split(".")
    if len(parts) == 1:
        if parts[0] not in ("preset", "out"):
            allowed = "preset, out, " + ", ".join(f"{s}.KEY" for s in _SECTIONS if s not in ("preset", "out"))
            raise ConfigError(f"unknown config key {key!r}; allowed: {allowed}")
        setattr(config, parts[0], check_value(key, value, str))
        return
    if len(parts) != 2:
        raise ConfigError(f"config key {key!r}: expected SECTION.KEY")
    section, name = parts
    if section == "model":
        model_fields = {f.name: f.type for f in dataclasses.fields(ModelConfig)}
        if name not in model_fields:
            raise ConfigError(f"unknown config key {key!r}; model keys: {', '.join(model_fields)}")
        types_ = _hints(ModelConfig)
        config.model[name] = check_value(key, value, types_[name])
        return
    if section not in _SECTIONS or section in ("preset", "out"):
        raise ConfigError(
            f"unknown config section {section!r} in {key!r}; sections: model, train, data, checkpoint, guard, parallel"
        )
    if section == "parallel" and name in _CHANGED:
        raise ConfigError(f"{key} is gone: {_CHANGED[name]}")
    if section == "parallel":
        name = _RENAMED.get(name, name)
    obj = getattr(config, section)
    hints = _hints(type(obj))
    if name not in hints:
        raise ConfigError(f"unknown config key {key!r}; {section} keys: {', '.join(hints)}")
    setattr(obj, name, check_value(key, value, hints[name]))


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, object]]:
    items = []
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and not prefix:
            items.extend(_flatten(value, full + "."))
        else:
            items.append((full, value))
    return items


def parse_value(text: str):
    """A --set value: a TOML literal (number, bool, quoted string, list) or else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **direct) -> JobConfig:
    """Defaults <- TOML file <- `key=value` overrides <- direct keyword overrides (CLI flags); validated."""
    config = JobConfig()
    if path is not None:
        data = read_toml(path, "config file")
        for key, value in _flatten(data):
            _apply(config, key, value)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
        key, text = item.split("=", 1)
        _apply(config, key.strip(), parse_value(text.strip()))
    for key, value in direct.items():
        if value is not None:
            _apply(config, key, value)
    config.validate()
    return config


def config_from_dict(data: dict) -> JobConfig:
    """Rebuild a JobConfig saved with `to_dict()` (checkpoints store it)."""
    config = JobConfig()
    for key, value in _flatten({k: v for k, v in data.items() if k != "model"}):
        if key.removeprefix("parallel.") in _CHANGED:
            continue
        _apply(config, key, value)
    config.model = dict(data.get("model") or {})
    config.validate()
    return config




def micro_batch_for(job: JobConfig, local: int) -> int:
    """Sequences per micro-batch on one rank. train.micro_batch is an upper bound: a rank with fewer
    sequences runs them in one micro-batch. parallel.microbatches, when set, gives the count; otherwise a
    pipeline whose micro_batch gives fewer than pp micro-batches (it needs pp in flight) runs 2 x pp, or the
    smallest count from there that divides the rank's sequences."""
    micro = min(job.train.micro_batch, local)
    n, pp = job.parallel.microbatches, job.parallel.pp
    if not n and (pp == 1 or local // micro >= pp):
        return micro
    if not n:
        n = min(2 * pp, local)
        while local % n:
            n += 1
    if local % n:
        raise LayoutError(f"parallel.microbatches = {n} must divide the {local} sequences per rank")
    return local // n


# the layout check's names (flopwise.layout.check, LayoutError.keys) as a job's config keys; model fields are model.*
_JOB_KEYS = {"global_batch": "train.global_batch", "micro_batch": "train.micro_batch",
             "world": "the process count: --nproc, or torchrun's"}


def job_keys(job: JobConfig, keys: tuple[str, ...]) -> list[str]:
    """The config keys (or launcher flag) behind a layout check's `keys`; a name no section holds is given as is."""
    parallel = {f.name for f in dataclasses.fields(ParallelSection)}
    model = {f.name for f in dataclasses.fields(ModelConfig)}
    named = {**_JOB_KEYS, "seq_len": "train.seq_len" if job.train.seq_len else "model.seq_len"}
    if job.parallel.microbatches:  # the count the job set, from which the micro-batch follows (micro_batch_for)
        named["micro_batch"] = "parallel.microbatches"
    return [named.get(k) or (f"parallel.{k}" if k in parallel else f"model.{k}" if k in model else k) for k in keys]


def resolve_layout(job: JobConfig, world: int | None = None) -> tuple[Layout, int]:
    """The job's layout with its exact micro-batch and split, checked against its model, batch and `world`
    (flopwise.layout.check, the planner's check): in the launcher before any process starts, and in every
    rank. Returns the layout and the micro-batches per rank and step. A refusal names the config keys it involves."""
    p, cfg = job.parallel, job.model_config()
    try:
        micro = micro_batch_for(job, local_batch(job.train.global_batch, p.dp))
        split = parse_split(p.split, cfg.layers, p.pp * p.vpp)
        layout = p.layout(micro, split)
        return layout, check_layout(layout, cfg, job.train.global_batch, job.seq_len, world)
    except LayoutError as exc:
        if not exc.keys:
            raise
        raise LayoutError(f"{exc} (set by {', '.join(job_keys(job, exc.keys))})", exc.keys) from None


TRAINER_PRECISIONS = ("bf16", "fp32", "tf32")  # the planner's precisions the trainer runs (train.dtype)


def job_for_layout(layout: Layout, model: ModelConfig, *, global_batch: int, precision: str = "bf16",
                   preset: str | None = None, tokens: float = 0.0, out: str | None = None) -> JobConfig:
    """A job config that runs `layout` (a plan's) as is: its degrees in [parallel], its micro-batch as
    train.micro_batch (which the trainer then honours exactly), its split written out."""
    if precision not in TRAINER_PRECISIONS:
        raise ConfigError(f"precision = {precision!r}: the trainer runs {' or '.join(TRAINER_PRECISIONS)} (plan with "
                          f"one of those)")
    base = get_preset(preset or "tiny")
    job = JobConfig(preset=preset or "tiny", model={k: v for k, v in model.to_dict().items() if getattr(base, k) != v})
    job.out = out or f"runs/{preset or 'model'}-{layout.describe()}"
    job.train.global_batch = global_batch
    job.train.micro_batch = layout.micro_batch
    job.train.dtype = precision
    if tokens:
        job.train.steps = max(1, -(-int(tokens) // (global_batch * model.seq_len)))
    for f in dataclasses.fields(ParallelSection):
        if hasattr(layout, f.name) and f.name != "split":
            setattr(job.parallel, f.name, getattr(layout, f.name))
    job.parallel.split = ",".join(map(str, layout.split)) if layout.split and layout.pp > 1 else "auto"
    job.validate()
    return job


def write_job_config(job: JobConfig, path: str | Path) -> Path:
    """The job as a TOML file `load_config` reads: sections and keys that differ from the defaults, and the
    whole [parallel] section; written atomically."""
    import tomli_w

    defaults = JobConfig().to_dict()
    data = job.to_dict()
    text = {k: data[k] for k in ("preset", "out")}
    if data["model"]:
        text["model"] = data["model"]
    for section in ("train", "data", "checkpoint", "guard"):
        changed = {k: v for k, v in data[section].items() if v != defaults[section][k]}
        if changed:
            text[section] = changed
    text["parallel"] = data["parallel"]
    path = Path(path)
    atomic_write_text(path, tomli_w.dumps(text))
    return path
