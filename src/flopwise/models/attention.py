"""Grouped-query attention with RoPE through scaled_dot_product_attention, optionally with LFA."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flopwise.models.config import ModelConfig
from flopwise.models.lfa import LocalizedFilter
from flopwise.models.rope import apply_rope


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, window: int = 0) -> None:
        super().__init__()
        self.window = window  # sliding window of this block (ModelConfig.layer_window); 0: full causal
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

    def core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """softmax(Q K^T / sqrt(d)) V over [b, heads, s, d]: what selective recomputation repeats in the backward
        (Korthikanti et al. 2022, section 5); `parallel/` may wrap it from outside."""
        gqa = q.shape[1] != k.shape[1]
        if self.window:  # the queries are the last q.shape[2] of the k.shape[2] positions (a cache holds the rest)
            attn_mask = window_mask(q.shape[2], k.shape[2], self.window, q.device) & (
                attn_mask if attn_mask is not None else True)
        if attn_mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=gqa)


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
