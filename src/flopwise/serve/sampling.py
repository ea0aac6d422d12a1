"""Sampling parameters (validated) and the sampler: greedy, temperature, top-k, top-p (nucleus, Holtzman et
al. 2020), per-request seeds, and log-probabilities of the chosen and the most likely tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from flopwise.config_values import MAX_TEMPERATURE
from flopwise.serve.config import RequestError

MAX_LOGPROBS = 20  # as OpenAI: at most 20 alternatives per position


@dataclass
class SamplingParams:
    max_tokens: int | None = 16  # None: up to the end of the context
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: no limit
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # alternatives per generated token (0: only the chosen token's)
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (OpenAI `echo` with `logprobs`)

    def __post_init__(self) -> None:
        if self.top_k == -1:
            self.top_k = 0
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.validate()

    def validate(self) -> None:
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            raise RequestError(f"max_tokens = {self.max_tokens!r}: must be a positive integer", "max_tokens")
        if not 0 <= self.temperature <= MAX_TEMPERATURE:
            raise RequestError(f"temperature = {self.temperature}: must be in [0, {MAX_TEMPERATURE:g}] (0 is greedy)",
                               "temperature")
        if not 0 < self.top_p <= 1:
            raise RequestError(f"top_p = {self.top_p}: must be in (0, 1]", "top_p")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise RequestError(f"top_k = {self.top_k!r}: must be a non-negative integer (0 or -1: no limit)", "top_k")
        if any(not isinstance(s, str) or not s for s in self.stop) or len(self.stop) > 16:
            raise RequestError("stop: at most 16 non-empty strings", "stop")
        for key in ("logprobs", "prompt_logprobs"):
            value = getattr(self, key)
            if value is not None and not 0 <= value <= MAX_LOGPROBS:
                raise RequestError(f"{key} = {value}: must be between 0 and {MAX_LOGPROBS}", key)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def request_generator(seed: int | None, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def sample_row(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> int:
    """One token from one row of fp32 logits [vocab]."""
    if params.greedy:
        return int(logits.argmax())
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.numel():
        threshold = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(0) - sorted_probs  # mass of the more likely tokens
        sorted_probs = sorted_probs.masked_fill(before >= params.top_p, 0.0)  # the top token always stays
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=gen))


def argmax_rows(logits: torch.Tensor) -> list[int]:
    """The index of each row's largest value (the first one where several are equal), as torch.argmax.
    On CPU by numpy: torch's CPU argmax over a row does not vectorise (torch 2.11-2.13: 1.3 ms for 64 rows
    of 8,192 logits on one core, numpy's 0.08 ms), and greedy decoding takes one per step."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        return logits.detach().numpy().argmax(axis=-1).tolist()
    return logits.argmax(dim=-1).tolist()


def sample(logits: torch.Tensor, params: list[SamplingParams], gens: list[torch.Generator]) -> list[int]:
    """One token per row of logits [n, vocab]; greedy rows are taken together."""
    logits = logits.float()
    greedy = [i for i, p in enumerate(params) if p.greedy]
    if len(greedy) == len(params):  # the common case: one argmax, no row copy
        return argmax_rows(logits)
    out = [0] * len(params)
    if greedy:
        picks = argmax_rows(logits[greedy])
        for i, tok in zip(greedy, picks, strict=True):
            out[i] = tok
    for i, p in enumerate(params):
        if not p.greedy:
            out[i] = sample_row(logits[i], p, gens[i])
    return out


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # the most likely alternatives, best first


def token_logprobs(logits: torch.Tensor, chosen: list[int], top_n: int) -> list[TokenLogprob]:
    """Log-probabilities (of the model's distribution, before temperature and truncation) of `chosen`
    under each row of logits [n, vocab], with the top_n alternatives."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(1, torch.tensor(chosen, device=logp.device).unsqueeze(1)).squeeze(1).tolist()
    if top_n:
        vals, ids = logp.topk(top_n, dim=-1)
        tops = [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), vals.tolist(), strict=True)]
    else:
        tops = [[] for _ in chosen]
    return [TokenLogprob(c, lp, t) for c, lp, t in zip(chosen, picked, tops, strict=True)]
