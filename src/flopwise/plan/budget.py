"""Compute budget: training FLOPs, PF-days, compute-optimal model size and tokens, time on N GPUs.

- Training FLOPs C = 6 N D (Kaplan et al. 2020, section 2.1: forward 2 N, backward 4 N FLOPs per token),
  or, when a model shape is given, flops.model_flops_per_token x D (adds the attention term, PaLM appendix B).
- Compute-optimal tokens D = 20 N (Hoffmann et al. 2022, "Chinchilla", Table 3: ~20 tokens per parameter);
  for a budget C: C = 6 N (20 N) = 120 N^2, so N = sqrt(C / 120) and D = 20 N.
- Wall-clock on n GPUs of peak P at model FLOPs utilisation u: C / (n P u).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from flopwise.errors import ConfigError
from flopwise.flops import model_flops_per_token, param_counts
from flopwise.hardware import Accelerator
from flopwise.models.config import ModelConfig

TOKENS_PER_PARAM = 20.0  # Chinchilla (Hoffmann et al. 2022)
PF_DAY = 1e15 * 86400.0  # FLOPs in one petaFLOP/s-day


@dataclass(frozen=True)
class Budget:
    params: float
    tokens: float
    flops: float
    pf_days: float
    optimal_tokens: float  # 20 N for this model size
    optimal_params_for_flops: float  # the compute-optimal N for this FLOP budget
    optimal_tokens_for_flops: float
    gpus: int
    accelerator: str
    mfu: float
    seconds: float
    days: float
    gpu_hours: float

    def to_dict(self) -> dict:
        return asdict(self)


def optimal_tokens(params: float) -> float:
    return TOKENS_PER_PARAM * params


def optimal_params(flops: float) -> float:
    """Compute-optimal parameter count for a FLOP budget: C = 6 N (20 N)."""
    return math.sqrt(flops / (6.0 * TOKENS_PER_PARAM))


def training_flops(params: float, tokens: float) -> float:
    return 6.0 * params * tokens


def budget(
    accelerator: Accelerator,
    gpus: int,
    mfu: float,
    params: float | None = None,
    tokens: float | None = None,
    flops: float | None = None,
    model: ModelConfig | None = None,
) -> Budget:
    """Fill in what was not given: from a model (or a parameter count) and tokens, a FLOP budget and tokens, or a FLOP
    budget alone. Tokens default to the compute-optimal 20 N; a FLOP budget alone gives the compute-optimal N and D.
    Two of size, tokens and budget fix the third, so all three (or a model and a count) are refused."""
    if not 0 < mfu <= 1:
        raise ConfigError(f"mfu = {mfu}: must be a fraction in (0, 1]")
    if gpus < 1:
        raise ConfigError(f"gpus = {gpus}: must be a positive integer")
    if model is not None and params is not None:
        raise ConfigError("give a model (--preset) or a parameter count (--params), not both: the model has its own")
    if sum(x is not None for x in (params if model is None else 1.0, tokens, flops)) == 3:
        raise ConfigError("give at most two of the model size, the tokens and the FLOP budget: C = 6 N D ties the third")
    if model is not None:
        params = float(param_counts(model).total)
    if params is None:
        if flops is None:
            raise ConfigError(
                "give a model (--preset), a parameter count (--params) or a FLOP budget (--flops)"
            )
        # a budget and its tokens fix the size (C = 6 N D); a budget alone, the compute-optimal size and tokens
        params = flops / (6.0 * tokens) if tokens is not None else optimal_params(flops)
        tokens = tokens or optimal_tokens(params)
    if params <= 0:
        raise ConfigError(f"params = {params}: must be positive")
    if tokens is None:
        tokens = optimal_tokens(params) if flops is None else flops / (6.0 * params)
    if tokens <= 0:
        raise ConfigError(f"tokens = {tokens}: must be positive")
    if flops is None:
        flops = model_flops_per_token(model) * tokens if model is not None else training_flops(params, tokens)
    seconds = flops / (gpus * accelerator.peak_flops * mfu)
    if not all(math.isfinite(x) for x in (params, tokens, flops, seconds, optimal_params(flops))):
        raise ConfigError("the numbers are too large to compute with (they overflow): check the parameters, tokens "
                          "and FLOP budget")
    return Budget(
        params=params,
        tokens=tokens,
        flops=flops,
        pf_days=flops / PF_DAY,
        optimal_tokens=optimal_tokens(params),
        optimal_params_for_flops=optimal_params(flops),
        optimal_tokens_for_flops=optimal_tokens(optimal_params(flops)),
        gpus=gpus,
        accelerator=accelerator.name,
        mfu=mfu,
        seconds=seconds,
        days=seconds / 86400.0,
        gpu_hours=seconds * gpus / 3600.0,
    )
