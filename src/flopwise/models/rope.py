"""Rotary position embedding (Su et al. 2021, RoFormer), applied over the full head dim, rotate-half form."""

from __future__ import annotations

import torch


def rope_table(head_dim: int, max_positions: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each [max_positions, head_dim], in fp32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_positions, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [b, s, heads, d]; cos/sin: [b or 1, s, d] already gathered at each token's position."""
    cos = cos.unsqueeze(2)
    sin = sin.unsqueeze(2)
    out = x.float() * cos + _rotate_half(x.float()) * sin
    return out.type_as(x)
