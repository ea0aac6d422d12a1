"""Decoder-only transformer: pre-norm RMSNorm, RoPE, GQA (optionally with LFA), SwiGLU or a mixture of
SwiGLU experts (models/moe.py), tied embeddings.

Built so that `parallel/` can cut it from outside: blocks live in a ModuleDict keyed by their global
index, and `tok_embeddings`, `norm` and `output` may be set to None on pipeline stages that lack them.

Packed sequences: `segments` [b, s] gives each token's document id. Positions restart at each document,
attention never crosses documents and the LFA filter is reset at document starts, so a packed batch
gives the same per-document logits as each document run alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from flopwise.errors import ConfigError
from flopwise.models.attention import build_attention
from flopwise.models.config import ModelConfig
from flopwise.models.mlp import GeluMLP, SwiGLU
from flopwise.models.moe import MoEFeedForward
from flopwise.models.rope import rope_table


def document_segments(tokens: torch.Tensor, eod_id: int) -> torch.Tensor:
    """Document id of every token: the number of end-of-document tokens strictly before it.

    The end-of-document token itself belongs to the document it ends."""
    is_eod = (tokens == eod_id).long()
    return torch.cumsum(is_eod, dim=1) - is_eod


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int = 0) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.hidden, eps=cfg.norm_eps)
        self.attn = build_attention(cfg, cfg.layer_window(index))
        self.ffn_norm = nn.RMSNorm(cfg.hidden, eps=cfg.norm_eps)
        if cfg.layer_is_moe(index):
            self.mlp = MoEFeedForward(cfg)
        elif cfg.experts:  # a leading dense block of an MoE model
            self.mlp = SwiGLU(cfg.hidden, cfg.dense_ffn)
        else:
            self.mlp = SwiGLU(cfg.hidden, cfg.ffn) if cfg.mlp == "swiglu" else GeluMLP(cfg.hidden, cfg.ffn)

    def forward(self, x, cos, sin, keep=None, attn_mask=None, layer_cache=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, keep, attn_mask, layer_cache)
        return x + self.mlp(self.ffn_norm(x))


class KVCache:
    """Decoding state: keys/values per layer plus the constant-size LFA state (x[t-1], y1[t-1]).

    Also keeps each cached token's document id and position, so a batch may hold left padding as its
    own segment and a prompt always starts with fresh positions and a fresh filter."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device=None, dtype=torch.float32):
        if max_len > cfg.seq_len:
            raise ConfigError(f"cache length {max_len} exceeds the model context {cfg.seq_len}")
        self.max_len = max_len
        self.length = 0
        # latent attention's keys carry rope_head_dim more dims than its values (cached expanded, not as the latent)
        k_shape = (batch, cfg.kv_heads, max_len, cfg.qk_head_dim)
        v_shape = (batch, cfg.kv_heads, max_len, cfg.head_dim)
        self.layers = [
            {"k": torch.zeros(k_shape, device=device, dtype=dtype), "v": torch.zeros(v_shape, device=device, dtype=dtype)}
            for _ in range(cfg.layers)
        ]
        self.segments = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        self.positions = torch.zeros(batch, max_len, dtype=torch.long, device=device)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.layers = nn.ModuleDict({str(i): Block(cfg, i) for i in range(cfg.layers)})
        self.norm = nn.RMSNorm(cfg.hidden, eps=cfg.norm_eps)
        self.output = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_table(cfg.rope_dim, cfg.seq_len, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """(Re)initialise parameters and the RoPE tables; call after `to_empty` for a meta-device model.

        Output projections get std / sqrt(2 * layers) (GPT-2 scaled init)."""
        gen = None
        device = self.rope_cos.device
        if seed is not None and device.type != "meta":
            gen = torch.Generator(device=device).manual_seed(seed)
        cfg = self.cfg
        out_std = cfg.init_std / math.sqrt(2 * cfg.layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.RMSNorm):
                module.reset_parameters()
            elif isinstance(module, MoEFeedForward):  # stacked expert weights (its router is an nn.Linear)
                module.reset_parameters(cfg.init_std, out_std, gen)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=cfg.init_std, generator=gen)
            elif isinstance(module, (nn.Linear, nn.Conv1d)):
                if module is self.output and cfg.tie_embeddings:
                    continue
                std = out_std if name.endswith(("wo", "w2")) else cfg.init_std
                nn.init.normal_(module.weight, std=std, generator=gen)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if device.type != "meta":
            cos, sin = rope_table(cfg.rope_dim, cfg.seq_len, cfg.rope_base, device=device)
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)

    def forward(
        self,
        tokens: torch.Tensor,
        segments: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """tokens: [b, s] ids (or [b, s, h] hidden states on a pipeline stage without embeddings).

        Returns logits [b, s, vocab] (or hidden states on a stage without the output head)."""
        h = self.tok_embeddings(tokens) if self.tok_embeddings is not None else tokens
        b, s = h.shape[:2]
        positions, keep, attn_mask = self._layout(b, s, h.device, h.dtype, segments, cache)
        cos = self.rope_cos[positions] if positions is not None else self.rope_cos[:s].unsqueeze(0)
        sin = self.rope_sin[positions] if positions is not None else self.rope_sin[:s].unsqueeze(0)
        for index, layer in self.layers.items():
            layer_cache = None
            if cache is not None:
                layer_cache = cache.layers[int(index)]
                layer_cache["length"] = cache.length
            h = layer(h, cos, sin, keep, attn_mask, layer_cache)
        if cache is not None:
            cache.length += s
        if self.norm is not None:
            h = self.norm(h)
        if self.output is not None:
            h = self.output(h)
        return h

    def _layout(self, b, s, device, dtype, segments, cache):
        """Positions, LFA keep-mask and attention mask for this chunk; all None for one plain document."""
        if segments is None and cache is None:
            if s > self.cfg.seq_len:
                raise ConfigError(f"sequence of {s} tokens exceeds the model context {self.cfg.seq_len}")
            return None, None, None
        if segments is None:
            segments = torch.zeros(b, s, dtype=torch.long, device=device)
        past = cache.length if cache is not None else 0
        if past + s > self.cfg.seq_len or (cache is not None and past + s > cache.max_len):
            limit = min(self.cfg.seq_len, cache.max_len if cache is not None else self.cfg.seq_len)
            raise ConfigError(f"{past + s} tokens exceed the model context of {limit}")
        index = torch.arange(s, device=device).expand(b, s)
        if past:
            prev_seg = cache.segments[:, past - 1 : past]
            prev_pos = cache.positions[:, past - 1 : past]
        else:
            prev_seg = torch.full((b, 1), -1, dtype=torch.long, device=device)
            prev_pos = torch.full((b, 1), -1, dtype=torch.long, device=device)
        starts = segments != torch.cat([prev_seg, segments[:, :-1]], dim=1)
        last_start = torch.cummax(torch.where(starts, index, torch.full_like(index, -1)), dim=1).values
        positions = torch.where(last_start >= 0, index - last_start, prev_pos + 1 + index)
        keep = (~starts).unsqueeze(-1).to(dtype)
        if cache is not None:
            cache.segments[:, past : past + s] = segments
            cache.positions[:, past : past + s] = positions
            k_seg = cache.segments[:, : past + s]
        else:
            k_seg = segments
        q_abs = past + torch.arange(s, device=device)
        k_abs = torch.arange(past + s, device=device)
        causal = k_abs.unsqueeze(0) <= q_abs.unsqueeze(1)  # [s, past + s]
        attn_mask = (segments.unsqueeze(2) == k_seg.unsqueeze(1)) & causal  # [b, s, past + s]
        return positions, keep, attn_mask.unsqueeze(1)
