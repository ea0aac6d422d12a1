"""Grouped-query attention with RoPE through scaled_dot_product_attention, optionally with LFA; and multi-head
latent attention (DeepSeek-V2, arXiv 2405.04434, section 2.1), whose keys and values come up from a narrow latent."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flopwise.models.config import ModelConfig
from flopwise.models.lfa import LocalizedFilter
from flopwise.models.rope import apply_rope


class _Core(nn.Module):
    """The attention core both kinds share: `parallel/` wraps `core` from outside (selective recomputation)."""

    window = 0  # sliding window of this block (ModelConfig.layer_window); 0: full causal

    def core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """softmax(Q K^T / sqrt(d)) V over [b, heads, s, d]: what selective recomputation repeats in the backward
        (Korthikanti et al. 2022, section 5)."""
        gqa = q.shape[1] != k.shape[1]
        if self.window:  # the queries are the last q.shape[2] of the k.shape[2] positions (a cache holds the rest)
            attn_mask = window_mask(q.shape[2], k.shape[2], self.window, q.device) & (
                attn_mask if attn_mask is not None else True)
        if attn_mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=gqa)


class Attention(_Core):
    def __init__(self, cfg: ModelConfig, window: int = 0) -> None:
        super().__init__()
        self.window = window
        self.heads = cfg.heads
        self.kv_heads = cfg.kv_heads
        self.head_dim = cfg.head_dim
        self.wq = nn.Linear(cfg.hidden, cfg.heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.hidden, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.hidden, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.heads * cfg.head_dim, cfg.hidden, bias=False)
        self.lfa = LocalizedFilter(cfg.hidden, cfg.norm_eps) if cfg.lfa else None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        keep: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        layer_cache: dict | None = None,
    ) -> torch.Tensor:
        """x: [b, s, h] (already normed). attn_mask None means plain causal attention over this chunk."""
        b, s, _ = x.shape
        qk_in = self.lfa(x, keep, layer_cache) if self.lfa is not None else x
        # Heads are inferred (-1) so that a tensor-parallel shard of the projections works unchanged.
        q = self.wq(qk_in).view(b, s, -1, self.head_dim)
        k = self.wk(qk_in).view(b, s, -1, self.head_dim)
        v = self.wv(x).view(b, s, -1, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [b, heads, s, d]
        if layer_cache is not None:
            k, v = _append_kv(layer_cache, k, v)
        out = self.core(q, k, v, attn_mask)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class LatentAttention(_Core):
    """Multi-head latent attention. Queries: x W_q, or with q_lora_rank > 0 norm(x W_qa) W_qb; keys and values:
    c = norm(x W_kva[:kv_lora_rank]) brought up per head by W_kvb to head_dim unrotated key dims and head_dim value
    dims; each head's key also carries rope_head_dim rotated dims, one set for all heads (x W_kva[kv_lora_rank:]),
    and its query as many of its own. Tensor parallelism cuts W_q / W_qb, W_kvb by heads and W_o by its input; the
    down projections and latent norms stay whole on every rank (Megatron-Core's MLA duplicates them)."""

    def __init__(self, cfg: ModelConfig, window: int = 0) -> None:
        super().__init__()
        self.window = window
        self.head_dim, self.rope_head_dim, self.kv_lora_rank = cfg.head_dim, cfg.rope_head_dim, cfg.kv_lora_rank
        qk = cfg.heads * cfg.qk_head_dim
        if cfg.q_lora_rank:
            self.wq_a = nn.Linear(cfg.hidden, cfg.q_lora_rank, bias=False)
            self.q_norm = nn.RMSNorm(cfg.q_lora_rank, eps=cfg.norm_eps)
            self.wq_b = nn.Linear(cfg.q_lora_rank, qk, bias=False)
        else:
            self.wq = nn.Linear(cfg.hidden, qk, bias=False)
        self.wkv_a = nn.Linear(cfg.hidden, cfg.kv_lora_rank + cfg.rope_head_dim, bias=False)
        self.kv_norm = nn.RMSNorm(cfg.kv_lora_rank, eps=cfg.norm_eps)
        self.wkv_b = nn.Linear(cfg.kv_lora_rank, cfg.heads * 2 * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.heads * cfg.head_dim, cfg.hidden, bias=False)
        self.lfa = None

    def forward(self, x, cos, sin, keep=None, attn_mask=None, layer_cache=None) -> torch.Tensor:
        b, s, _ = x.shape
        d, r = self.head_dim, self.rope_head_dim
        q = self.wq_b(self.q_norm(self.wq_a(x))) if hasattr(self, "wq_a") else self.wq(x)
        q = q.view(b, s, -1, d + r)  # heads inferred: a tensor-parallel shard works unchanged
        latent, k_rope = self.wkv_a(x).split([self.kv_lora_rank, r], dim=-1)
        kv = self.wkv_b(self.kv_norm(latent)).view(b, s, -1, 2 * d)
        k_nope, v = kv.split([d, d], dim=-1)
        k_rope = apply_rope(k_rope.view(b, s, 1, r), cos, sin).expand(-1, -1, k_nope.shape[2], -1)
        q = torch.cat([q[..., :d], apply_rope(q[..., d:], cos, sin)], dim=-1)
        k = torch.cat([k_nope, k_rope], dim=-1)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [b, heads, s, d (+ r)]
        if layer_cache is not None:
            k, v = _append_kv(layer_cache, k, v)
        # values padded to the keys' width: the fused SDPA kernels want one head dim (unequal ones fall back to the
        # unfused path, which keeps the s x s probabilities); the padded output dims are zeros, dropped
        out = self.core(q, k, F.pad(v, (0, r)), attn_mask)[..., :d]
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


def build_attention(cfg: ModelConfig, window: int = 0) -> _Core:
    return LatentAttention(cfg, window) if cfg.is_latent else Attention(cfg, window)


def window_mask(queries: int, keys: int, window: int, device=None) -> torch.Tensor:
    """[queries, keys] bool: query i (position keys - queries + i) sees key j where 0 <= position - j < window, itself
    and the window - 1 tokens before it (Mistral's and FlashAttention's sliding window; causal within it)."""
    q = torch.arange(keys - queries, keys, device=device).unsqueeze(1)
    distance = q - torch.arange(keys, device=device).unsqueeze(0)
    return (distance >= 0) & (distance < window)


def _append_kv(layer_cache: dict, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Write this chunk's keys/values into the preallocated cache; return all keys/values so far."""
    start = layer_cache["length"]
    end = start + k.shape[2]
    layer_cache["k"][:, :, start:end] = k
    layer_cache["v"][:, :, start:end] = v
    return layer_cache["k"][:, :, :end], layer_cache["v"][:, :, :end]
