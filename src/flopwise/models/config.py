"""Model shape (ModelConfig) and the named presets.

Yuan 2.0 shapes are from ../shared/reference/yuan2.md (Yuan 2.0 paper, arXiv 2311.15786): vocab 135040,
SwiGLU FFN, RoPE base 10000 over the full head dim, RMSNorm eps 1e-6, no linear biases, tied embeddings.
Each Yuan preset has a Llama-style twin (`llama-*`) with LFA switched off, for comparison.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from flopwise.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 8192
    layers: int = 4
    hidden: int = 256
    heads: int = 8
    kv_heads: int = 4
    ffn: int = 768
    seq_len: int = 256
    lfa: bool = True  # Localized Filtering-based Attention (Yuan 2.0); False gives a plain Llama block
    mlp: str = "swiglu"  # "swiglu" (3 matrices) or "gelu" (2 matrices, GPT-style), for published shapes
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def validate(self) -> None:
        positive = ("vocab_size", "layers", "hidden", "heads", "kv_heads", "ffn", "seq_len")
        for key in positive:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model.{key} = {value!r}: must be a positive integer")
        if self.hidden % self.heads:
            raise ConfigError(f"model.hidden = {self.hidden}: must be divisible by model.heads = {self.heads}")
        if self.head_dim % 2:
            raise ConfigError(f"model head dim {self.head_dim} (hidden / heads): must be even for RoPE")
        if self.kv_heads > self.heads or self.heads % self.kv_heads:
            raise ConfigError(
                f"model.kv_heads = {self.kv_heads}: must divide model.heads = {self.heads} (grouped-query attention)"
            )
        if self.lfa and self.hidden % 2:
            raise ConfigError(f"model.hidden = {self.hidden}: must be even when model.lfa is on (filter is h -> h/2 -> h)")
        if self.mlp not in ("swiglu", "gelu"):
            raise ConfigError(f"model.mlp = {self.mlp!r}: must be 'swiglu' or 'gelu'")
        if self.rope_base <= 0 or self.norm_eps <= 0 or self.init_std <= 0:
            raise ConfigError("model.rope_base, model.norm_eps and model.init_std must be positive")

    def replace(self, **changes) -> ModelConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown model key(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model key(s): {', '.join(sorted(unknown))}")
        return cls(**data)


_YUAN_VOCAB = 135040

PRESETS: dict[str, ModelConfig] = {
    # Published Yuan 2.0 configurations (reference/yuan2.md table).
    "yuan2-2b": ModelConfig(_YUAN_VOCAB, 24, 2048, 32, 32, 8192, 8192, lfa=True),
    "yuan2-51b": ModelConfig(_YUAN_VOCAB, 42, 8192, 64, 64, 32768, 4096, lfa=True),
    "yuan2-102b": ModelConfig(_YUAN_VOCAB, 84, 8192, 64, 64, 32768, 4096, lfa=True),
    # Small presets for CPU: `tiny` is the demo model (a few M parameters), `nano` is for tests.
    "tiny": ModelConfig(8192, 4, 256, 8, 4, 768, 256, lfa=True),
    "nano": ModelConfig(512, 2, 64, 4, 2, 128, 64, lfa=True),
    # ~1B-parameter configuration for GPU benchmarks.
    "yuan-1b": ModelConfig(32000, 16, 2048, 16, 16, 5632, 2048, lfa=True),
}
for _name in [n for n in PRESETS if n.startswith("yuan")]:
    PRESETS["llama-" + _name.split("-", 1)[1]] = PRESETS[_name].replace(lfa=False)
for _name in ("tiny", "nano"):
    PRESETS[_name + "-llama"] = PRESETS[_name].replace(lfa=False)


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}") from None
