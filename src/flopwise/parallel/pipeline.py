"""Pipeline parallelism: block-level splits (explicit or balanced the Yuan 2.0 way) and stage parts.

Under 1F1B, stage i of p keeps min(p - i, m) micro-batches of activations in flight, so early stages
need more memory; the last stage also runs the LM head and the loss (Yuan 2.0, arXiv 2311.15786, section
4: "non-uniform pipeline parallelism"). `auto` chooses layers per stage by dynamic programming to
minimise the worst stage's max(time / mean time, memory / mean memory): early and last stages end up
with fewer layers. Activation bytes per layer follow Korthikanti et al. 2022, eq. (2):
s b h (34 + 5 a s / h) at 2-byte precision (scaled for fp32), divided by t under tensor+sequence
parallelism; model state is 16 bytes per parameter with mixed-precision AdamW (ZeRO paper, section 3.1)
or 16 bytes in fp32 (param 4, grad 4, two moments 8)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from flopwise.errors import ParallelError
from flopwise.flops import attention_flops_per_token, param_counts
from flopwise.models.config import ModelConfig


@dataclass(frozen=True)
class StageEstimate:
    layers: int
    in_flight: int
    params: int
    model_state_bytes: float
    activation_bytes: float

    @property
    def total_bytes(self) -> float:
        return self.model_state_bytes + self.activation_bytes


def in_flight_microbatches(stage: int, stages: int, microbatches: int, schedule: str) -> int:
    if schedule == "gpipe":
        return microbatches
    return min(stages - stage, microbatches)


def activation_bytes_per_layer(cfg: ModelConfig, micro_batch: int, seq: int, tp: int = 1, bytes_per_value: int = 2) -> float:
    s, b, h, a = seq, micro_batch, cfg.hidden, cfg.heads
    per_layer = s * b * h * (34 + 5 * a * s / h)  # Korthikanti et al. 2022, eq. (2), 16-bit activations
    if cfg.lfa:
        per_layer += s * b * h * 2 * 3  # LFA: shifted input, conv1 output and its shift, conv2 output, norm
    return per_layer * bytes_per_value / 2 / tp


def stage_estimates(cfg: ModelConfig, split: list[int], *, micro_batch: int, seq: int, microbatches: int,
                    schedule: str = "1f1b", tp: int = 1, bytes_per_value: int = 4) -> list[StageEstimate]:
    counts = param_counts(cfg)
    act = activation_bytes_per_layer(cfg, micro_batch, seq, tp, bytes_per_value)
    out = []
    for i, n in enumerate(split):
        params = n * counts.per_layer
        extra_act = 0.0
        if i == 0:
            params += counts.embedding
        if i == len(split) - 1:
            params += counts.head if (len(split) > 1 or not cfg.tie_embeddings) else 0
            params += cfg.hidden
            extra_act = micro_batch * seq * cfg.vocab_size * 4 * 2 / tp  # fp32 logits and their gradient
        flight = in_flight_microbatches(i, len(split), microbatches, schedule)
        out.append(StageEstimate(n, flight, params, params / tp * 16, (n * act) * flight + extra_act))
    return out


def parse_split(text: str, layers: int, stages: int) -> list[int] | None:
    """'auto' -> None; '2,2,3,3' -> [2, 2, 3, 3], checked against the layer and stage counts."""
    if text.strip() == "auto":
        return None
    try:
        split = [int(x) for x in text.split(",")]
    except ValueError:
        raise ParallelError(f"parallel.pp_layers = {text!r}: expected 'auto' or comma-separated integers") from None
    if len(split) != stages:
        raise ParallelError(f"parallel.pp_layers gives {len(split)} stages, the layout has {stages}")
    if any(n < 1 for n in split):
        raise ParallelError(f"parallel.pp_layers = {text!r}: every stage needs at least one layer")
    if sum(split) != layers:
        raise ParallelError(f"parallel.pp_layers = {text!r} sums to {sum(split)} layers; the model has {layers}")
    return split


def balanced_split(cfg: ModelConfig, stages: int, *, micro_batch: int = 1, seq: int | None = None,
                   microbatches: int | None = None, schedule: str = "1f1b") -> list[int]:
    """Layers per stage minimising the worst stage's max(relative time, relative memory)."""
    L = cfg.layers
    if stages > L:
        raise ParallelError(f"{stages} pipeline stages exceed {L} layers")
    if stages == 1:
        return [L]
    seq = seq or cfg.seq_len
    microbatches = microbatches or stages
    counts = param_counts(cfg)
    layer_time = 2.0 * counts.layers_matmul / L + attention_flops_per_token(cfg, seq) / L
    head_time = 2.0 * counts.head  # LM head forward FLOPs per token (backward scales both alike)
    head_layers = head_time / layer_time  # the LM head and loss in layer equivalents
    act = activation_bytes_per_layer(cfg, micro_batch, seq)
    state = 16.0 * counts.per_layer

    def time(i, n):
        return n + (head_layers if i == stages - 1 else 0.0)

    def mem(i, n):
        flight = in_flight_microbatches(i, stages, microbatches, schedule)
        return n * (state + act * flight) + (16.0 * counts.embedding if i in (0, stages - 1) else 0.0)

    t_mean = sum(time(i, L / stages) for i in range(stages)) / stages
    m_mean = sum(mem(i, L / stages) for i in range(stages)) / stages

    def cost(i, n):
        return max(time(i, n) / t_mean, mem(i, n) / m_mean)

    inf = float("inf")
    best = [[inf] * (L + 1) for _ in range(stages + 1)]
    choice = [[0] * (L + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for j in range(k, L - (stages - k) + 1):
            for n in range(1, j - (k - 1) + 1):
                value = max(best[k - 1][j - n], cost(k - 1, n))
                # ties: prefer more layers on later (non-last) stages, fewer on early ones
                if value < best[k][j] - 1e-12:
                    best[k][j], choice[k][j] = value, n
    split, j = [], L
    for k in range(stages, 0, -1):
        split.append(choice[k][j])
        j -= choice[k][j]
    return split[::-1]


def stage_layers(split: list[int]) -> list[range]:
    starts = [sum(split[:i]) for i in range(len(split))]
    return [range(s, s + n) for s, n in zip(starts, split, strict=True)]


def build_stage_part(model: nn.Module, layers: range, first: bool, last: bool) -> nn.Module:
    """A copy of the model holding only this stage's blocks (keys keep their global index, so parameter
    names match the single-device model), the embedding on the first stage, norm and head on the last."""
    part = copy.deepcopy(model)
    for key in list(part.layers.keys()):
        if int(key) not in layers:
            del part.layers[key]
    if not last:
        part.norm = None
        part.output = None
    if not first:
        part.tok_embeddings = None
    return part
