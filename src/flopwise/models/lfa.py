"""Localized Filtering-based Attention filter (Yuan 2.0, arXiv 2311.15786, section 3.1).

Two causal convolutions along the sequence, kernel size 2, with bias: h -> h/2 -> h.
    y1[t] = A0 x[t-1] + A1 x[t] + a ;  y2[t] = B0 y1[t-1] + B1 y1[t] + b ;  x' = RMSNorm(y2 + x)
Queries and keys are projected from x', values from x. The filter output never joins the residual stream.

Unlike the public Yuan code, the shifted inputs are zeroed at document starts (`keep` mask), so a token
never sees the previous document through the filter, and incremental decoding carries the constant-size
state (x[t-1], y1[t-1]) instead of re-running the prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _shift_right(x: torch.Tensor, first: torch.Tensor | None, keep: torch.Tensor | None) -> torch.Tensor:
    """x[t-1] along dim 1; position 0 takes `first` (the state from a previous chunk) or zeros."""
    if first is None:
        shifted = F.pad(x[:, :-1], (0, 0, 1, 0))
    else:
        shifted = torch.cat([first.unsqueeze(1).to(x.dtype), x[:, :-1]], dim=1)
    if keep is not None:
        shifted = shifted * keep
    return shifted


class LocalizedFilter(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        # Conv1d keeps the public checkpoint layout: weight[:, :, 0] applies to t-1, weight[:, :, 1] to t.
        self.conv1 = nn.Conv1d(hidden, hidden // 2, kernel_size=2)
        self.conv2 = nn.Conv1d(hidden // 2, hidden, kernel_size=2)
        self.norm = nn.RMSNorm(hidden, eps=eps)

    @staticmethod
    def _causal_conv(x: torch.Tensor, prev: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
        w = conv.weight
        return F.linear(prev, w[:, :, 0]) + F.linear(x, w[:, :, 1], conv.bias)

    def forward(
        self,
        x: torch.Tensor,
        keep: torch.Tensor | None = None,
        state: dict | None = None,
    ) -> torch.Tensor:
        """x: [b, s, h]. keep: [b, s, 1], 0 where a document starts. state: decoding state, updated in place."""
        x_first = state.get("x_prev") if state else None
        x_prev = _shift_right(x, x_first, keep)
        y1 = self._causal_conv(x, x_prev, self.conv1)
        y1_first = state.get("y1_prev") if state else None
        y1_prev = _shift_right(y1, y1_first, keep)
        y2 = self._causal_conv(y1, y1_prev, self.conv2)
        if state is not None:
            state["x_prev"] = x[:, -1].detach()
            state["y1_prev"] = y1[:, -1].detach()
        return self.norm(y2 + x)
