"""Model shape (ModelConfig) and the named presets.

Yuan 2.0 shapes are from ../shared/reference/yuan2.md (Yuan 2.0 paper, arXiv 2311.15786): vocab 135040,
SwiGLU FFN, RoPE base 10000 over the full head dim, RMSNorm eps 1e-6, no linear biases, tied embeddings.
Each Yuan preset has a Llama-style twin (`llama-*`) with LFA switched off, for comparison.

Mixture of experts (`experts` > 0, models/moe.py): every block's FFN becomes `experts` SwiGLU experts of
width `ffn`, `top_k` of them per token, chosen by the Yuan 2.0-M32 attention router or a linear one, plus, with
`shared_ffn` > 0, a shared SwiGLU of that width every token passes (DeepSeekMoE's shared experts, arXiv 2401.06066).
With `dense_layers` > 0 the first blocks keep a dense SwiGLU of width `dense_ffn` (DeepSeek-V3's first 3, Moonlight's
first 1) and the rest are MoE.

Multi-head latent attention (`kv_lora_rank` > 0, models/attention.py LatentAttention; DeepSeek-V2, arXiv 2405.04434,
section 2.1): keys and values come up from a `kv_lora_rank`-wide latent, queries from a `q_lora_rank`-wide one (0:
projected directly), each head's query and key carry `head_dim` dims without position plus `rope_head_dim` rotated
ones (the rotated key shared by all heads), and values `head_dim` dims.
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
    attn_dim: int = 0  # width of the attention projections (heads x head dim); 0: hidden (Yuan's attention_projection_size)
    window: int = 0  # sliding-window attention: each token sees itself and the window - 1 before it; 0: full causal
    global_every: int = 0  # with a window, every global_every-th block keeps full attention (GPT-OSS 2); 0: none does
    experts: int = 0  # 0: dense FFN; otherwise the experts per MoE layer, each a SwiGLU of width ffn
    top_k: int = 2  # experts per token (MoE)
    shared_ffn: int = 0  # MoE: width of the shared expert(s) every token also passes (DeepSeek, Llama 4); 0: none
    router: str = "attention"  # "attention" (Yuan 2.0-M32) or "linear" (Switch/GShard-style)
    capacity_factor: float = 0.0  # 0: dropless; c > 0: at most ceil(c x tokens x top_k / experts) per expert (training)
    aux_loss_coef: float = 0.01  # load-balancing loss weight (Switch Transformer's alpha)
    z_loss_coef: float = 0.0  # router z-loss weight (ST-MoE uses 1e-3)
    dense_layers: int = 0  # MoE: the first dense_layers blocks keep a dense SwiGLU of width dense_ffn (DeepSeek-V3: 3)
    dense_ffn: int = 0  # MoE: the width of those dense blocks' SwiGLU
    kv_lora_rank: int = 0  # multi-head latent attention: the keys' and values' latent width; 0: plain attention
    q_lora_rank: int = 0  # latent attention: the queries' latent width; 0: queries projected from the hidden state
    rope_head_dim: int = 0  # latent attention: rotated query / key dims per head, besides head_dim unrotated ones

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return (self.attn_dim or self.hidden) // self.heads

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    @property
    def is_latent(self) -> bool:
        """Multi-head latent attention (DeepSeek-V2's MLA)."""
        return self.kv_lora_rank > 0

    @property
    def qk_head_dim(self) -> int:
        """Dims per head of a query and a key: head_dim, plus the rotated ones under latent attention."""
        return self.head_dim + self.rope_head_dim

    @property
    def rope_dim(self) -> int:
        """Dims per head RoPE rotates: all of them, or latent attention's rope_head_dim."""
        return self.rope_head_dim if self.is_latent else self.head_dim

    @property
    def moe_layers(self) -> int:
        """Blocks with experts: all but the leading dense ones (0 for a dense model)."""
        return self.layers - self.dense_layers if self.experts else 0

    def layer_is_moe(self, index: int) -> bool:
        return bool(self.experts) and index >= self.dense_layers

    def dense_block(self) -> ModelConfig:
        """The config of a leading dense block of an MoE model (its SwiGLU of dense_ffn, the same attention)."""
        return self.replace(experts=0, shared_ffn=0, ffn=self.dense_ffn, dense_layers=0, dense_ffn=0)

    def layer_window(self, index: int) -> int:
        """The attention window of block `index` (0: full causal): every block windowed, or all but each
        global_every-th (Gemma 3: 5 local, then 1 global; GPT-OSS: alternating, the first local)."""
        if not self.window or (self.global_every and index % self.global_every == self.global_every - 1):
            return 0
        return self.window

    @property
    def windowed_layers(self) -> int:
        return sum(1 for i in range(self.layers) if self.layer_window(i))

    def validate(self) -> None:
        positive = ("vocab_size", "layers", "hidden", "heads", "kv_heads", "ffn", "seq_len")
        for key in positive:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model.{key} = {value!r}: must be a positive integer")
        if self.attn_dim < 0 or isinstance(self.attn_dim, bool) or not isinstance(self.attn_dim, int):
            raise ConfigError(f"model.attn_dim = {self.attn_dim!r}: must be 0 (= hidden) or a positive integer")
        width_key = "attn_dim" if self.attn_dim else "hidden"
        if (self.attn_dim or self.hidden) % self.heads:
            raise ConfigError(
                f"model.{width_key} = {self.attn_dim or self.hidden}: must be divisible by model.heads = {self.heads}"
            )
        self._validate_latent()
        if self.rope_dim % 2:
            where = (f"model.rope_head_dim = {self.rope_head_dim}" if self.is_latent
                     else f"model head dim {self.head_dim} ((attn_dim or hidden) / heads)")
            raise ConfigError(f"{where}: must be even for RoPE")
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
        self._non_negative("window", "global_every")
        if self.global_every and not self.window:
            raise ConfigError(f"model.global_every = {self.global_every}: needs a sliding window (model.window > 0)")
        if self.global_every == 1:
            raise ConfigError("model.global_every = 1 would make every block global: use model.window = 0")
        if self.window and self.lfa:
            raise ConfigError("model.window: sliding-window attention is for plain attention; set model.lfa = false")
        self._validate_moe()

    def _non_negative(self, *keys: str) -> None:
        for key in keys:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"model.{key} = {value!r}: must be a non-negative integer (0: off)")

    def _validate_latent(self) -> None:
        self._non_negative("kv_lora_rank", "q_lora_rank", "rope_head_dim")
        if not self.kv_lora_rank:
            stray = [k for k in ("q_lora_rank", "rope_head_dim") if getattr(self, k)]
            if stray:
                raise ConfigError(f"model.{stray[0]} = {getattr(self, stray[0])}: latent attention needs "
                                  "model.kv_lora_rank > 0")
            return
        if not self.rope_head_dim:
            raise ConfigError("model.kv_lora_rank: latent attention needs model.rope_head_dim > 0 (its rotated dims)")
        if self.kv_heads != self.heads:
            raise ConfigError(f"model.kv_heads = {self.kv_heads}: latent attention gives every head its own key and "
                              f"value; set kv_heads = heads = {self.heads}")
        if self.lfa:
            raise ConfigError("model.kv_lora_rank: latent attention is for plain attention; set model.lfa = false")

    def _validate_moe(self) -> None:
        self._non_negative("experts", "top_k", "shared_ffn", "dense_layers", "dense_ffn")
        if self.dense_layers or self.dense_ffn:
            if not self.experts:
                raise ConfigError("model.dense_layers / dense_ffn: leading dense blocks are for an MoE model "
                                  "(model.experts > 0); a dense model's width is model.ffn")
            if not self.dense_layers or not self.dense_ffn:
                raise ConfigError("model.dense_layers and model.dense_ffn go together: how many leading dense blocks, "
                                  "and their SwiGLU width")
            if self.dense_layers >= self.layers:
                raise ConfigError(f"model.dense_layers = {self.dense_layers}: must be fewer than model.layers = "
                                  f"{self.layers} (an MoE model needs an MoE block)")
        if not self.experts:
            if self.shared_ffn:
                raise ConfigError(f"model.shared_ffn = {self.shared_ffn}: shared experts need model.experts > 0")
            return
        if not 1 <= self.top_k <= self.experts:
            raise ConfigError(f"model.top_k = {self.top_k}: must be between 1 and model.experts = {self.experts}")
        if self.router not in ("attention", "linear"):
            raise ConfigError(f"model.router = {self.router!r}: must be 'attention' or 'linear'")
        if self.mlp != "swiglu":
            raise ConfigError(f"model.mlp = {self.mlp!r}: experts are SwiGLU; use mlp = 'swiglu' with model.experts")
        for key in ("capacity_factor", "aux_loss_coef", "z_loss_coef"):
            if getattr(self, key) < 0:
                raise ConfigError(f"model.{key} = {getattr(self, key)}: must not be negative")

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
    # Yuan 2.0-M32 (arXiv 2405.17976): the public pretraining script (examples/pretrain_yuan2.0_moe_2x32B.sh)
    # has 24 layers, hidden 2048, 16 heads of 256 (attention width 4096, twice the 2B's), seq 4096, LFA,
    # 32 SwiGLU experts of 8192, top-2, attention router. Gives 39.94B total / 3.70B active (paper: 40B / 3.7B).
    "yuan2-m32": ModelConfig(_YUAN_VOCAB, 24, 2048, 16, 16, 8192, 4096, lfa=True, attn_dim=4096, experts=32, top_k=2),
}
for _name in [n for n in PRESETS if n.startswith("yuan")]:
    PRESETS["llama-" + _name.split("-", 1)[1]] = PRESETS[_name].replace(lfa=False)
for _name in ("tiny", "nano"):
    PRESETS[_name + "-llama"] = PRESETS[_name].replace(lfa=False)
# MoE on CPU: `tiny` with 8 experts of width 384, top-2, so its active FFN (2 x 384) is tiny's dense 768 and
# `tiny` is its same-active-parameters dense peer. `nano-moe` is for tests.
PRESETS["tiny-moe"] = PRESETS["tiny"].replace(ffn=384, experts=8, top_k=2)
PRESETS["nano-moe"] = PRESETS["nano"].replace(ffn=64, experts=4, top_k=2)


# Public architectures to plan (and, at their size, to train on a cluster), from their model cards' configs: untied
# embeddings, no LFA, a pre-training context (Llama 3's and Qwen3's main phase, Mixtral's 32k; GPT-OSS publishes none:
# 4096, as NVIDIA's recipes). Llama 3 (arXiv 2407.21783, table 3); Qwen3 MoE
# (Qwen/Qwen3-30B-A3B, Qwen3-235B-A22B config.json: heads x head_dim 128 wider than hidden, QK-norm not modelled);
# Mixtral 8x7B (arXiv 2401.04088); GPT-OSS (openai/gpt-oss-20b, -120b config.json: 128-token windows on every other
# block, the first windowed; its attention sinks, projection biases and clamped GLU are not modelled); DeepSeek-V2-Lite
# and DeepSeek-V3 (deepseek-ai config.json: latent attention of 128 + 64 rotated dims per head, shared experts, leading
# dense blocks; V3's sigmoid router with grouped top-k and its multi-token-prediction module are not modelled).
_PUBLIC = dict(lfa=False, tie_embeddings=False, norm_eps=1e-5)
PRESETS.update({
    "llama3-8b": ModelConfig(128256, 32, 4096, 32, 8, 14336, 8192, rope_base=500000.0, **_PUBLIC),
    "llama3-70b": ModelConfig(128256, 80, 8192, 64, 8, 28672, 8192, rope_base=500000.0, **_PUBLIC),
    "llama3.1-405b": ModelConfig(128256, 126, 16384, 128, 8, 53248, 8192, rope_base=500000.0, **_PUBLIC),
    "qwen3-30b-a3b": ModelConfig(151936, 48, 2048, 32, 4, 768, 4096, attn_dim=4096, experts=128, top_k=8,
                                 router="linear", rope_base=1e6, **{**_PUBLIC, "norm_eps": 1e-6}),
    "qwen3-235b-a22b": ModelConfig(151936, 94, 4096, 64, 4, 1536, 4096, attn_dim=8192, experts=128, top_k=8,
                                   router="linear", rope_base=1e6, **{**_PUBLIC, "norm_eps": 1e-6}),
    "mixtral-8x7b": ModelConfig(32000, 32, 4096, 32, 8, 14336, 32768, experts=8, top_k=2, router="linear",
                                rope_base=1e6, **_PUBLIC),
    "gpt-oss-20b": ModelConfig(201088, 24, 2880, 64, 8, 2880, 4096, attn_dim=4096, experts=32, top_k=4,
                               router="linear", window=128, global_every=2, rope_base=150000.0, **_PUBLIC),
    "deepseek-v2-lite": ModelConfig(102400, 27, 2048, 16, 16, 1408, 4096, attn_dim=2048, experts=64, top_k=6,
                                    router="linear", shared_ffn=2 * 1408, dense_layers=1, dense_ffn=10944,
                                    kv_lora_rank=512, rope_head_dim=64, **{**_PUBLIC, "norm_eps": 1e-6}),
    "deepseek-v3": ModelConfig(129280, 61, 7168, 128, 128, 2048, 4096, attn_dim=16384, experts=256, top_k=8,
                               router="linear", shared_ffn=2048, dense_layers=3, dense_ffn=18432, kv_lora_rank=512,
                               q_lora_rank=1536, rope_head_dim=64, **{**_PUBLIC, "norm_eps": 1e-6}),
    "gpt-oss-120b": ModelConfig(201088, 36, 2880, 64, 8, 2880, 4096, attn_dim=4096, experts=128, top_k=4,
                                router="linear", window=128, global_every=2, rope_base=150000.0, **_PUBLIC),
})


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}") from None
