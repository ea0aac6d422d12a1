"""`flopwise generate`: sample one continuation from a checkpoint, as a thin client of the serving engine
(so the command line and the server decode the same way: paged KV cache, LFA state, end-of-document id
from the data manifest)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flopwise.errors import ConfigError
from flopwise.serve.config import EngineConfig
from flopwise.serve.engine import Engine
from flopwise.serve.loader import load_served_model
from flopwise.serve.sampling import SamplingParams


@dataclass
class Generator:
    engine: Engine

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> Generator:
        served = load_served_model(path, device)
        blocks = -(-served.max_model_len // 16)  # one sequence of the full context
        return cls(Engine(served, EngineConfig(block_size=16, max_num_seqs=1, num_blocks=blocks, device=device,
                                               enable_prefix_caching=False)))

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def eod_id(self) -> int | None:
        return self.engine.eod_id

    def stream(self, prompt: str, max_tokens: int = 100, temperature: float = 0.8, top_k: int = 50,
               seed: int | None = None, on_capped=None) -> Iterator[str]:
        """Yield decoded text pieces as tokens are sampled; stops at end-of-document or max_tokens, or the model's
        context (then `on_capped(tokens)` is told how many it can sample)."""
        if max_tokens <= 0:
            raise ConfigError(f"max tokens = {max_tokens}: must be positive")
        if temperature < 0:
            raise ConfigError(f"temperature = {temperature}: must not be negative (0 means greedy)")
        if top_k < 0:
            raise ConfigError(f"top-k = {top_k}: must not be negative (0 means no limit)")
        ids = self.tokenizer.encode(prompt).ids
        if not ids:
            raise ConfigError("empty prompt: give at least one character")
        context = self.engine.max_model_len
        if len(ids) >= context:
            raise ConfigError(f"prompt is {len(ids)} tokens: longer than the model context of {context} allows")
        params = SamplingParams(max_tokens=min(max_tokens, context - len(ids)), temperature=temperature,
                                top_k=top_k, seed=seed)
        request = self.engine.add_request(ids, params)  # validates the sampling parameters
        if params.max_tokens < max_tokens and on_capped is not None:
            on_capped(params.max_tokens)
        try:
            while True:
                for out in self.engine.step():
                    if out.text:
                        yield out.text
                    if out.finished:
                        return
        finally:
            self.engine.abort(request)

    def generate(self, prompt: str, **kwargs) -> str:
        return "".join(self.stream(prompt, **kwargs))
