"""Parameter and FLOP counts: the one source for the trainer's MFU and the planner's predictions.

Conventions
- Model FLOPs (for MFU) follow PaLM (Chowdhery et al. 2022, appendix B): per token, 6 x (matmul
  parameters) + 12 x layers x hidden_attn x seq, i.e. forward = 2 FLOPs per matmul weight plus the two
  attention matmuls (QK^T and AV, 2 x seq x hidden_attn each, counted over the full sequence as PaLM does),
  and backward = 2 x forward. The embedding lookup is no matmul; the LM head is.
- LFA's two kernel-2 convolutions are matmuls over [x(t-1), x(t)]: 2 x in x out weights each, so they
  enter through the parameter term like any projection.
- Mixture of experts (models/moe.py): model FLOPs count the work each token does, i.e. the active
  parameters (Fedus et al. 2021, Switch Transformer, section 2: "FLOPs per token" stay those of the k
  experts a token visits): the router's projection (h x 3E for the attention router, h x E linear) and
  top_k experts of 3 x h x ffn each enter the 6 x N term; the attention router's E x E core per token
  (q k^T outer product, E^2, and the product with v, 2 E^2) is added like the attention core. Memory
  counts (`ParamCounts.total`, `per_layer`, `Gemm.weights`) hold all experts.
- Hardware FLOPs add the recomputed forward work (Korthikanti et al. 2022, "Reducing Activation
  Recomputation in Large Transformer Models", section 5): full recomputation repeats every layer's
  forward (not the LM head): with a GELU MLP of 4h this gives Megatron's
  96 B s l h^2 (1 + s / 6h + V / 16 l h) per step; selective recomputation repeats only the attention
  core (QK^T, softmax, AV).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flopwise.errors import ConfigError
from flopwise.models.config import ModelConfig

# none | selective (Megatron's: the attention core) | full (whole blocks) | op (per-op selective checkpointing as
# torchtitan runs it: each block keeps its input, every second matmul's output and the attention output, and
# recomputes the rest; op_checkpoint_gemms)
RECOMPUTE_MODES = ("none", "selective", "full", "op")
# the modes that checkpoint whole blocks: the block's input kept, its forward (all or part) run again in the backward
BLOCK_CHECKPOINTS = frozenset({"full", "op"})


@dataclass(frozen=True)
class ParamCounts:
    total: int  # unique parameters (tied embeddings counted once), every expert included
    embedding: int  # vocab x hidden
    per_layer: int  # one transformer block as stored, LFA, router and all experts included
    lfa_per_layer: int  # the LFA filter's share of per_layer
    head: int  # LM head weights used in matmuls (the tied embedding when tied)
    layers_matmul: int  # matmul weights one token multiplies in all blocks (MoE: router + top_k experts)
    active: int  # parameters one token uses: total less the experts it is not routed to (= total if dense)

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding

    @property
    def matmul(self) -> int:
        """Weights multiplied per token: every block's projections plus the LM head."""
        return self.layers_matmul + self.head


@dataclass(frozen=True)
class Gemm:
    """One weight matmul of a block, per token: [tokens, k] x [k, n], `count` times.

    `tp` says how Megatron-style tensor parallelism cuts it: "column" splits n, "row" splits k,
    "replicated" keeps it whole on every rank (LFA's filter needs the full hidden vector).
    `stored` is how many [k, n] weights exist when that differs from `count` (MoE experts: E stored,
    top_k used per token)."""

    name: str
    k: int
    n: int
    tp: str
    count: int = 1
    stored: int = 0  # 0: same as count

    @property
    def weights(self) -> int:
        """Weights held (memory)."""
        return self.k * self.n * (self.stored or self.count)

    @property
    def active_weights(self) -> int:
        """Weights one token multiplies (compute)."""
        return self.k * self.n * self.count


def attention_gemms(cfg: ModelConfig) -> tuple[Gemm, ...]:
    """A block's attention projections in the order its forward runs them. Latent attention (DeepSeek-V2, section
    2.1): the down projections to the query latent and to the key-value latent with the shared rotated key (whole on
    every TP rank, as Megatron-Core duplicates them), the up projections to each head's query and to its unrotated key
    and value (cut by heads), the output projection."""
    h, heads, d = cfg.hidden, cfg.heads, cfg.head_dim
    if cfg.is_latent:
        qk = heads * cfg.qk_head_dim
        query = ((Gemm("wq_a", h, cfg.q_lora_rank, "replicated"), Gemm("wq_b", cfg.q_lora_rank, qk, "column"))
                 if cfg.q_lora_rank else (Gemm("wq", h, qk, "column"),))
        return (*query, Gemm("wkv_a", h, cfg.kv_lora_rank + cfg.rope_head_dim, "replicated"),
                Gemm("wkv_b", cfg.kv_lora_rank, heads * 2 * d, "column"), Gemm("wo", heads * d, h, "row"))
    q, kv = heads * d, cfg.kv_heads * d
    return (Gemm("wq", h, q, "column"), Gemm("wk", h, kv, "column"), Gemm("wv", h, kv, "column"),
            Gemm("wo", q, h, "row"))


def block_gemms(cfg: ModelConfig) -> tuple[Gemm, ...]:
    """The weight matmuls of one transformer block, with their tensor-parallel cut."""
    h = cfg.hidden
    gemms = list(attention_gemms(cfg))
    if cfg.experts:  # the router sees the full hidden vector; each token visits top_k of the E experts
        e, k = cfg.experts, cfg.top_k
        gemms += [
            Gemm("router", h, 3 * e if cfg.router == "attention" else e, "replicated"),
            Gemm("expert_up", h, cfg.ffn, "column", 2 * k, stored=2 * e),  # SwiGLU: gate + up
            Gemm("expert_down", cfg.ffn, h, "row", k, stored=e),
        ]
        if cfg.shared_ffn:  # the shared expert: a dense SwiGLU every token passes, cut by tp like one
            gemms += [Gemm("shared_up", h, cfg.shared_ffn, "column", 2), Gemm("shared_down", cfg.shared_ffn, h, "row")]
    else:
        gemms += [
            Gemm("w_up", h, cfg.ffn, "column", 2 if cfg.mlp == "swiglu" else 1),  # SwiGLU: gate + up
            Gemm("w_down", cfg.ffn, h, "row"),
        ]
    if cfg.lfa:  # conv1 (2 x h x h/2) and conv2 (2 x h/2 x h): kernel-2 convolutions as two matmuls each
        gemms += [
            Gemm("lfa_conv1", h, h // 2, "replicated", 2),
            Gemm("lfa_conv2", h // 2, h, "replicated", 2),
        ]
    return tuple(gemms)


def head_gemm(cfg: ModelConfig) -> Gemm:
    """The LM head (vocab-parallel under TP: a column cut of the vocabulary)."""
    return Gemm("head", cfg.hidden, cfg.vocab_size, "column")


def op_checkpoint_gemms(cfg: ModelConfig) -> tuple[tuple[Gemm, ...], tuple[Gemm, ...]]:
    """(kept, recomputed): a dense block's matmuls, one GEMM each, split as per-op selective checkpointing splits
    them. Its policy counts the bias-free matmuls (aten.mm) in the order the forward runs them, keeps the 1st, 3rd, ...
    outputs and recomputes the rest up to the last output a backward needs (torchtitan's op policy;
    parallel/op_checkpoint.py). The order: the LFA filter
    first (each kernel-2 convolution is a bias-free matmul of the previous token, counted, and one of the current
    token with the bias, an addmm, always recomputed), then Q, K, V, the output projection, gate and up (or the first
    MLP matmul), down."""
    if cfg.experts:
        raise ConfigError("recompute = 'op' is for dense blocks: an MoE layer's expert matmuls are not costed under it")
    gemms = block_gemms(cfg)
    counted: list[Gemm] = []
    always: list[Gemm] = []
    for g in sorted(gemms, key=lambda g: not g.name.startswith("lfa")):  # the filter runs first
        one = Gemm(g.name, g.k, g.n, g.tp)
        if g.name.startswith("lfa"):
            counted.append(one)  # x[t-1] W0: counted
            always.extend([one] * (g.count - 1))  # x[t] W1 + b: an addmm
        else:
            counted.extend([one] * g.count)
    kept, again = counted[0::2], counted[1::2]
    if len(counted) % 2 == 0:  # the block's last matmul (down) not kept: nothing needs its output, so the
        again = again[:-1]     # non-reentrant recomputation stops before it (a GELU block's)
    return tuple(kept), tuple(again) + tuple(always)


def _block_matmul_params(cfg: ModelConfig) -> tuple[int, int, int]:
    """(matmul weights one token multiplies in one block, matmul weights stored in one block, of which LFA)."""
    gemms = block_gemms(cfg)
    return (sum(g.active_weights for g in gemms), sum(g.weights for g in gemms),
            sum(g.weights for g in gemms if g.name.startswith("lfa")))


def _lfa_extra_params(cfg: ModelConfig) -> int:
    """LFA's parameters outside its matmuls: the conv biases and the filter's RMSNorm."""
    h = cfg.hidden
    return h // 2 + h + h if cfg.lfa else 0


def block_norm_params(cfg: ModelConfig) -> int:
    """A block's parameters outside its matmuls: the two block RMSNorms, latent attention's latent norms, LFA's."""
    return 2 * cfg.hidden + _lfa_extra_params(cfg) + cfg.q_lora_rank + cfg.kv_lora_rank


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Parameter counts; `per_layer` is an MoE model's MoE block, its leading dense blocks (dense_layers) counted in
    the totals at their own size."""
    h = cfg.hidden
    active_matmul, matmul, lfa_matmul = _block_matmul_params(cfg)
    other = block_norm_params(cfg)
    lfa = lfa_matmul + _lfa_extra_params(cfg)
    per_layer = matmul + other
    embedding = cfg.vocab_size * h
    head = cfg.vocab_size * h
    outside = embedding + h + (0 if cfg.tie_embeddings else head)  # + the final norm
    n = cfg.layers - cfg.dense_layers  # blocks like per_layer
    layers_active = n * active_matmul
    total = outside + n * per_layer
    if cfg.dense_layers:
        dense_active, dense_matmul, _ = _block_matmul_params(cfg.dense_block())
        layers_active += cfg.dense_layers * dense_active
        total += cfg.dense_layers * (dense_matmul + other)
    active = outside + layers_active + cfg.layers * other
    return ParamCounts(total, embedding, per_layer, lfa, head, layers_active, active)


def count_parameters_meta(cfg: ModelConfig) -> int:
    """Parameters of the real module, built on the meta device (no memory): checks `param_counts`."""
    from flopwise.models.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(cfg)
    return sum(p.numel() for p in model.parameters())


def attention_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Forward FLOPs of QK^T and AV for one token over all layers (full-sequence convention: 2 x 2 x seq x heads x
    head_dim per layer; a sliding-window layer's seq is its window, where that is shorter; latent attention's QK^T
    over qk_head_dim, its AV over head_dim)."""
    s = seq_len or cfg.seq_len
    keys = (cfg.layers - cfg.windowed_layers) * s + cfg.windowed_layers * min(cfg.window, s)
    return 4.0 * keys * cfg.heads * score_head_dim(cfg)


def score_head_dim(cfg: ModelConfig) -> float:
    """The mean of a head's query-key and value dims, which the attention core's two matmuls run over (head_dim, or
    latent attention's (qk_head_dim + head_dim) / 2)."""
    return (cfg.qk_head_dim + cfg.head_dim) / 2


# A fused attention kernel's backward recomputes the scores (Q K^T) and runs four more matmuls (dV, dP, dQ, dK):
# 5 against the forward's 2, i.e. 2.5 x the forward's FLOPs (Dao 2023, FlashAttention-2, section 3.1.2; its
# benchmarks count backward FLOPs as 2.5 x forward). Unfused attention keeps the scores: 2 x, like a GEMM.
FLASH_BACKWARD_FLOPS = 2.5


def causal_attention_flops(seq: float, head_dim: int, heads: int, batch: int, window: int = 0) -> float:
    """Forward FLOPs a fused causal attention kernel runs (QK^T and AV, 2 x 2 x seq^2 x head_dim per head and
    sequence): half the full-sequence count above, since the kernel skips the masked half. With a sliding `window`
    shorter than the sequence it visits only the blocks inside the band: seq x window - window^2 / 2 query-key pairs
    (FlashAttention-2's window_size; the seq^2 / 2 of full causal at window = seq)."""
    pairs = seq * window - window * window / 2 if 0 < window < seq else seq * seq / 2
    return 4.0 * pairs * head_dim * heads * batch


def layer_router_flops_per_token(cfg: ModelConfig) -> float:
    """Forward FLOPs of the attention router's core for one token in one layer (its projection is a Gemm):
    the E x E outer product q k^T (E^2 multiplies) and its product with v (E^2 multiply-adds, 2 E^2)."""
    return 3.0 * cfg.experts**2 if cfg.experts and cfg.router == "attention" else 0.0


def forward_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    counts = param_counts(cfg)
    return (2.0 * counts.matmul + attention_flops_per_token(cfg, seq_len)
            + cfg.moe_layers * layer_router_flops_per_token(cfg))


def model_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token (forward + backward) without recomputation: the MFU numerator."""
    return 3.0 * forward_flops_per_token(cfg, seq_len)


def recompute_flops_per_token(cfg: ModelConfig, recompute: str, seq_len: int | None = None) -> float:
    """Extra forward FLOPs per token spent recomputing activations in the backward pass."""
    if recompute not in RECOMPUTE_MODES:
        raise ConfigError(f"recompute = {recompute!r}: must be one of {', '.join(RECOMPUTE_MODES)}")
    if recompute == "none":
        return 0.0
    if recompute == "selective":
        return attention_flops_per_token(cfg, seq_len)
    if recompute == "op":
        return 2.0 * cfg.layers * sum(g.k * g.n for g in op_checkpoint_gemms(cfg)[1])
    return (2.0 * param_counts(cfg).layers_matmul + attention_flops_per_token(cfg, seq_len)
            + cfg.moe_layers * layer_router_flops_per_token(cfg))


def hardware_flops_per_token(cfg: ModelConfig, recompute: str = "none", seq_len: int | None = None) -> float:
    """FLOPs the device actually executes per token, recomputation included (the HFU numerator)."""
    return model_flops_per_token(cfg, seq_len) + recompute_flops_per_token(cfg, recompute, seq_len)


def mfu(tokens_per_s: float, cfg: ModelConfig, peak_flops: float, seq_len: int | None = None) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the device peak."""
    if peak_flops <= 0:
        return 0.0
    return tokens_per_s * model_flops_per_token(cfg, seq_len) / peak_flops
