"""Sample text from a checkpoint with the KV cache and LFA decoding state (temperature, top-k)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from flopwise.errors import CheckpointError, ConfigError
from flopwise.models import KVCache, Transformer
from flopwise.train.checkpoint import read_config, resolve_checkpoint
from flopwise.train.config import config_from_dict
from flopwise.train.engine import build_model, load_engine_state, resolve_device


@dataclass
class Generator:
    model: Transformer
    tokenizer: object  # tokenizers.Tokenizer
    eod_id: int | None
    device: torch.device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> Generator:
        from tokenizers import Tokenizer

        directory = resolve_checkpoint(path)
        job = config_from_dict(read_config(directory)["job"])
        tok_path = directory / "tokenizer.json"
        if not tok_path.is_file():
            raise CheckpointError(f"checkpoint {directory} has no tokenizer.json")
        tokenizer = Tokenizer.from_file(str(tok_path))
        model = build_model(job.model_config(), job.train.seed)
        load_engine_state(model, None, directory)
        dev = resolve_device(device)
        return cls(model.to(dev).eval(), tokenizer, tokenizer.token_to_id("<|endoftext|>"), dev)

    @torch.no_grad()
    def stream(self, prompt: str, max_tokens: int = 100, temperature: float = 0.8, top_k: int = 50,
               seed: int | None = None) -> Iterator[str]:
        """Yield decoded text pieces as tokens are sampled; stops at end-of-document or max_tokens."""
        if max_tokens <= 0:
            raise ConfigError(f"max tokens = {max_tokens}: must be positive")
        if temperature < 0:
            raise ConfigError(f"temperature = {temperature}: must not be negative (0 means greedy)")
        if top_k < 0:
            raise ConfigError(f"top-k = {top_k}: must not be negative (0 means no limit)")
        ids = self.tokenizer.encode(prompt).ids
        if not ids:
            raise ConfigError("empty prompt: give at least one character")
        context = self.model.cfg.seq_len
        if len(ids) >= context:
            raise ConfigError(f"prompt is {len(ids)} tokens: longer than the model context of {context} allows")
        max_tokens = min(max_tokens, context - len(ids))
        gen = torch.Generator(device=self.device)
        if seed is not None:
            gen.manual_seed(seed)
        cache = KVCache(self.model.cfg, 1, len(ids) + max_tokens, device=self.device)
        logits = self.model(torch.tensor([ids], device=self.device), cache=cache)[0, -1]
        out_ids: list[int] = []
        emitted = ""
        for _ in range(max_tokens):
            token = _sample(logits.float(), temperature, top_k, gen)
            if token == self.eod_id:
                break
            out_ids.append(token)
            text = self.tokenizer.decode(out_ids)
            if not text.endswith("\ufffd"):  # wait for a whole UTF-8 character
                yield text[len(emitted):]
                emitted = text
            logits = self.model(torch.tensor([[token]], device=self.device), cache=cache)[0, -1]

    def generate(self, prompt: str, **kwargs) -> str:
        return "".join(self.stream(prompt, **kwargs))


def _sample(logits: torch.Tensor, temperature: float, top_k: int, gen: torch.Generator) -> int:
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k and top_k < logits.numel():
        threshold = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen))
