"""Job configuration: dataclass sections, read from TOML, overridable with `--set section.key=value`.

Every wrong value gets one line that names the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from flopwise.config_values import check_value
from flopwise.errors import ConfigError
from flopwise.models.config import ModelConfig, get_preset


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
    dtype: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    compile: bool = False
    eval_every: int = 50
    eval_batches: int = 8
    log_every: int = 10
    doc_mask: bool = True  # reset positions, attention and the LFA filter at document boundaries

    def validate(self) -> None:
        _positive(self, "train", ("steps", "global_batch", "micro_batch", "lr", "eval_batches", "log_every"))
        _non_negative(self, "train", ("seq_len", "min_lr", "warmup_steps", "weight_decay", "grad_clip", "eval_every"))
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"train.{key} = {getattr(self, key)}: must be in [0, 1)")
        if self.min_lr > self.lr:
            raise ConfigError(f"train.min_lr = {self.min_lr}: must not exceed train.lr = {self.lr}")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"train.dtype = {self.dtype!r}: must be one of auto, fp32, bf16")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"train.device = {self.device!r}: must be auto, cpu, cuda or cuda:N")


@dataclass
class DataSection:
    shards: str = ""  # a shard directory (manifest.json); empty: the embedded demo corpus
    cache_dir: str = ".flopwise-cache"  # where the demo corpus is prepared once

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

    def validate(self) -> None:
        if self.spike_factor <= 1:
            raise ConfigError(f"guard.spike_factor = {self.spike_factor}: must be greater than 1")
        _positive(self, "guard", ("window", "min_history", "max_consecutive"))


@dataclass
class ParallelSection:
    """Degrees of parallelism; their product is the world size. Implemented in flopwise.parallel."""

    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    pp: int = 1
    zero: int = 0  # 0 replicate, 1 optimizer state, 2 + gradients, 3 + parameters (sharded over dp_shard)
    sequence_parallel: bool = True  # with tp > 1
    pp_layers: str = "auto"  # "auto" or comma-separated layers per stage, e.g. "2,2,3,3,4,4,4,2"
    pp_schedule: str = "1f1b"  # gpipe | 1f1b | interleaved
    pp_chunks: int = 1  # stages per rank (interleaved)
    pp_microbatches: int = 0  # micro-batches per pipeline step; 0: from train.micro_batch, at least 2 x pp if it gives < pp
    activation_checkpoint: str = "none"  # none | full | selective
    ac_every: int = 2  # selective: checkpoint every k-th block
    timeout_s: int = 600  # collective timeout: a dead or hung rank ends the job with an error

    def validate(self) -> None:
        _positive(self, "parallel", ("dp_replicate", "dp_shard", "tp", "pp", "pp_chunks", "ac_every", "timeout_s"))
        _non_negative(self, "parallel", ("pp_microbatches",))
        if self.zero not in (0, 1, 2, 3):
            raise ConfigError(f"parallel.zero = {self.zero}: must be 0, 1, 2 or 3")
        if self.pp_schedule not in ("gpipe", "1f1b", "interleaved"):
            raise ConfigError(f"parallel.pp_schedule = {self.pp_schedule!r}: must be gpipe, 1f1b or interleaved")
        if self.activation_checkpoint not in ("none", "full", "selective"):
            raise ConfigError(
                f"parallel.activation_checkpoint = {self.activation_checkpoint!r}: must be none, full or selective"
            )

    @property
    def world_size(self) -> int:
        return self.dp_replicate * self.dp_shard * self.tp * self.pp


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
        types_ = typing.get_type_hints(ModelConfig)
        config.model[name] = check_value(key, value, types_[name])
        return
    if section not in _SECTIONS or section in ("preset", "out"):
        raise ConfigError(
            f"unknown config section {section!r} in {key!r}; sections: model, train, data, checkpoint, guard, parallel"
        )
    obj = getattr(config, section)
    hints = typing.get_type_hints(type(obj))
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
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
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
        _apply(config, key, value)
    config.model = dict(data.get("model") or {})
    config.validate()
    return config


