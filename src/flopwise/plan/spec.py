"""What the planner is asked about: the cluster, the training run and a parallel layout.

The layout vocabulary is the trainer's: tp, pp, dp, vpp (interleaved chunks per pipeline rank), zero stage,
sequence_parallel, recompute ('none' | 'selective' | 'full'), micro_batch, global_batch, pp_layers.
'selective' here is Korthikanti et al. 2022's selective recomputation (only the attention core is recomputed),
the same meaning as `flopwise.flops.recompute_flops_per_token`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from flopwise.errors import ConfigError
from flopwise.flops import RECOMPUTE_MODES
from flopwise.hardware import GB, Accelerator

PRECISIONS = ("bf16", "fp16", "fp32")
SCHEDULES = ("gpipe", "1f1b", "interleaved")


@dataclass(frozen=True)
class Software:
    """Facts about the trainer that runs a layout, which the cost and memory model depend on."""

    attention: str  # 'flash': fused attention, no s^2 activations | 'unfused': softmax + dropout kernels
    dropout: bool  # dropout after attention and MLP (GPT-style)
    fused_norm: bool  # the norm kernel keeps only its input (apex/Megatron) vs PyTorch's decomposed RMSNorm
    overlap_grad_reduce: bool  # data-parallel gradient reduction overlapped with the last backward


SOFTWARE = {
    # flopwise's trainer: PyTorch SDPA (flash), no dropout, nn.RMSNorm (autograd keeps input, normalised x and
    # output), DDP/FSDP bucketed gradient reduction that overlaps the backward.
    "flopwise": Software("flash", False, False, True),
    # Megatron-LM as in the published runs (Narayanan et al. 2021, Korthikanti et al. 2022): fused
    # scale-mask-softmax + dropout (no flash attention yet), GPT dropout, apex fused LayerNorm, gradient
    # all-reduce after the backward (no overlap in those versions).
    "megatron": Software("unfused", True, True, False),
}


@dataclass(frozen=True)
class Cluster:
    accelerator: Accelerator
    gpus: int
    gpus_per_node: int = 8
    intra_node_bw: float | None = None  # bytes/s per GPU, one direction; None: the accelerator's link
    inter_node_bw: float = 25 * GB  # bytes/s per GPU, one direction (8 x 200 Gb/s InfiniBand per node)

    def __post_init__(self) -> None:
        if self.gpus < 1:
            raise ConfigError(f"cluster gpus = {self.gpus}: must be a positive integer")
        if self.gpus_per_node < 1:
            raise ConfigError(f"cluster gpus_per_node = {self.gpus_per_node}: must be a positive integer")
        if self.gpus > self.gpus_per_node and self.gpus % self.gpus_per_node:
            raise ConfigError(
                f"cluster gpus = {self.gpus}: must be a multiple of gpus_per_node = {self.gpus_per_node}"
            )
        if self.inter_node_bw <= 0 or (self.intra_node_bw is not None and self.intra_node_bw <= 0):
            raise ConfigError("cluster bandwidths must be positive")

    @property
    def intra_bw(self) -> float:
        return self.intra_node_bw if self.intra_node_bw is not None else self.accelerator.link_bandwidth


@dataclass(frozen=True)
class Training:
    global_batch: int  # sequences per optimizer step
    tokens: float = 0.0  # tokens to train (for days and GPU-hours); 0: not asked
    precision: str = "bf16"
    seq_len: int | None = None  # None: the model's context
    software: str = "flopwise"  # which trainer runs the layout: its kernels and overlaps (SOFTWARE)

    def __post_init__(self) -> None:
        if not isinstance(self.global_batch, int) or self.global_batch < 1:
            raise ConfigError(f"global_batch = {self.global_batch!r}: must be a positive integer")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision = {self.precision!r}: must be one of {', '.join(PRECISIONS)}")
        if self.software not in SOFTWARE:
            raise ConfigError(f"software = {self.software!r}: must be one of {', '.join(SOFTWARE)}")
        if self.tokens < 0:
            raise ConfigError(f"tokens = {self.tokens}: must be non-negative")

    @property
    def dtype_bytes(self) -> int:
        return 4 if self.precision == "fp32" else 2

    @property
    def profile(self) -> Software:
        return SOFTWARE[self.software]


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    dp: int = 1
    vpp: int = 1
    zero: int = 0
    sequence_parallel: bool = False
    recompute: str = "none"
    micro_batch: int = 1
    schedule: str = "1f1b"  # gpipe | 1f1b | interleaved (implied by vpp > 1)
    pp_layers: tuple[int, ...] | None = None  # layers per pipeline stage; None: uniform

    def __post_init__(self) -> None:
        for key in ("tp", "pp", "dp", "vpp", "micro_batch"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"layout {key} = {value!r}: must be a positive integer")
        if self.zero not in (0, 1, 2, 3):
            raise ConfigError(f"layout zero = {self.zero!r}: must be 0, 1, 2 or 3")
        if self.recompute not in RECOMPUTE_MODES:
            raise ConfigError(
                f"layout recompute = {self.recompute!r}: must be one of {', '.join(RECOMPUTE_MODES)}"
            )
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"layout schedule = {self.schedule!r}: must be one of {', '.join(SCHEDULES)}")
        if self.vpp > 1 and self.schedule != "interleaved":
            object.__setattr__(self, "schedule", "interleaved")
        if self.schedule == "interleaved" and self.vpp == 1:
            object.__setattr__(self, "schedule", "1f1b")
        if self.pp_layers is not None:
            object.__setattr__(self, "pp_layers", tuple(int(n) for n in self.pp_layers))

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    def replace(self, **changes) -> Layout:
        return dataclasses.replace(self, **changes)

    def short(self) -> str:
        parts = [f"tp={self.tp}", f"pp={self.pp}", f"dp={self.dp}"]
        if self.vpp > 1:
            parts.append(f"vpp={self.vpp}")
        parts += [
            f"zero={self.zero}",
            f"sp={int(self.sequence_parallel)}",
            f"rc={self.recompute}",
            f"mb={self.micro_batch}",
        ]
        if self.schedule == "gpipe":
            parts.append("gpipe")
        return ",".join(parts)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["pp_layers"] = list(self.pp_layers) if self.pp_layers is not None else None
        return d


LAYOUT_KEYS = {
    "tp": int,
    "pp": int,
    "dp": int,
    "vpp": int,
    "zero": int,
    "micro_batch": int,
    "mb": int,
    "sequence_parallel": bool,
    "sp": bool,
    "recompute": str,
    "rc": str,
    "schedule": str,
    "pp_layers": list,
}
KEY_ALIASES = {"mb": "micro_batch", "sp": "sequence_parallel", "rc": "recompute"}


def parse_layout(text: str) -> dict:
    """'tp=8,pp=16,recompute=full,pp_layers=2/3/3/2' -> the fixed layout fields (the rest is searched)."""
    fixed: dict = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        if "=" not in item:
            raise ConfigError(f"layout item {item!r}: expected key=value (keys: {', '.join(LAYOUT_KEYS)})")
        key, value = (x.strip() for x in item.split("=", 1))
        if key not in LAYOUT_KEYS:
            raise ConfigError(f"layout key {key!r}: must be one of {', '.join(LAYOUT_KEYS)}")
        kind = LAYOUT_KEYS[key]
        key = KEY_ALIASES.get(key, key)
        try:
            if kind is int:
                fixed[key] = int(value)
            elif kind is bool:
                if value.lower() not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                fixed[key] = value.lower() in ("1", "true", "yes", "on")
            elif kind is list:
                fixed[key] = tuple(int(v) for v in value.replace("/", " ").replace(";", " ").split())
            else:
                fixed[key] = value
        except ValueError:
            raise ConfigError(f"layout {key} = {value!r}: not a valid {kind.__name__}") from None
    return fixed
