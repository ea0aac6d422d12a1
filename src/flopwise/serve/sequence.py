"""One request's state in the engine: its tokens, where its keys live, and its text so far."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from flopwise.serve.block_pool import block_hash
from flopwise.serve.sampling import SamplingParams, TokenLogprob


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class RequestOutput:
    """What one step produced for one request: the new text and tokens, and whether it ended."""

    request_id: str
    text: str  # new text since the last output (after stop strings and incomplete UTF-8 are held back)
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    finished: bool
    finish_reason: str | None  # "stop", "length" or "abort"
    prompt_tokens: int
    output_tokens: int
    prompt_logprobs: list[TokenLogprob | None] | None = None  # with the first output, when asked for


@dataclass
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int  # after clipping to the context
    generator: torch.Generator
    arrival: float = field(default_factory=time.monotonic)
    status: Status = Status.WAITING
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose keys/values are in the cache
    block_table: list[int] = field(default_factory=list)
    block_names: list[int] = field(default_factory=list)  # prefix-cache names of the full blocks computed so far
    slot: int | None = None  # block-table row and LFA state slot while running
    synced_blocks: int = 0  # entries of block_table already copied into the engine's block-table tensor
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    scored: list[TokenLogprob] = field(default_factory=list)  # prompt log-probabilities computed so far
    detokenizer: Detokenizer = None  # its output text (set from params.stop)
    sent_tokens: int = 0  # tokens already returned
    sent_prompt_logprobs: bool = False
    first_token_time: float | None = None

    def __post_init__(self) -> None:
        if self.detokenizer is None:
            self.detokenizer = Detokenizer(self.params.stop)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def tokens(self, start: int, end: int) -> list[int]:
        """token_ids[start:end] without building the whole list."""
        p = len(self.prompt_ids)
        if start >= p:
            return self.output_ids[start - p : end - p]
        if end <= p:
            return self.prompt_ids[start:end]
        return self.prompt_ids[start:] + self.output_ids[: end - p]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.params.prompt_logprobs is not None and self.prompt_logprobs is None

    def name_full_blocks(self, block_size: int) -> list[tuple[int, int]]:
        """(block, name) for blocks that became full and computed since the last call."""
        named = []
        tokens = None
        while (len(self.block_names) + 1) * block_size <= self.num_computed:
            i = len(self.block_names)
            tokens = tokens or self.token_ids
            parent = self.block_names[-1] if self.block_names else None
            self.block_names.append(block_hash(parent, tokens[i * block_size : (i + 1) * block_size]))
            named.append((self.block_table[i], self.block_names[-1]))
        return named

    def update_text(self, tokenizer) -> str:
        """Decode the output, apply stop strings (a hit finishes the request); return the new emittable text."""
        piece, stopped = self.detokenizer.update(tokenizer, self.output_ids, self.finish_reason is not None)
        if stopped:
            self.finish_reason = "stop"
        return piece


@dataclass
class Detokenizer:
    """A request's output text: decoded from its tokens, cut at the first stop string, released in pieces.

    The engine runs one per request in process; with the engine in its own process, the API process runs
    them (`flopwise.serve.engine_process`) and aborts a request whose text reached a stop string.

    Incremental (as vLLM's detokenizer): each update decodes only the new tokens, with the tokens decoded
    last time as context, and adds the difference between the text of context + new tokens and the text of
    the context alone. Decoding the whole output at every step costs time growing with its length (the API
    process's largest cost per step at 64 streams of 80 tokens), and the context keeps what a decoder does
    at the start of a text (such as dropping a leading space) from showing in the middle."""

    stop: list[str]
    text: str = ""  # decoded output, cut at a stop string
    emitted: int = 0  # characters of `text` already returned
    prefix_offset: int = 0  # output tokens [prefix_offset, read_offset): the context of the next decode
    read_offset: int = 0  # output tokens whose text is in `text`

    def _new_text(self, tokenizer, output_ids: list[int], finished: bool) -> str:
        """The text of output_ids[read_offset:]; "" while it ends in an incomplete UTF-8 character (it
        waits for the next token) unless the output is finished."""
        if len(output_ids) <= self.read_offset:
            return ""
        context = tokenizer.decode(output_ids[self.prefix_offset : self.read_offset]) if self.read_offset else ""
        full = tokenizer.decode(output_ids[self.prefix_offset :])
        if len(full) <= len(context) or (full.endswith("\ufffd") and not finished):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(output_ids)
        return full[len(context) :]

    def update(self, tokenizer, output_ids: list[int], finished: bool) -> tuple[str, bool]:
        """(the newly emittable text, whether a stop string ended the output). While the request runs, the
        last len(longest stop) - 1 characters and an incomplete UTF-8 character are held back, so streamed
        pieces always add up to the final (non-streamed) text."""
        previous = self.text
        text = previous + self._new_text(tokenizer, output_ids, finished)  # no end-of-document or stop token
        stopped = False
        if self.stop and len(text) > len(previous):
            longest = max(len(s) for s in self.stop)
            search_from = max(0, len(previous) - longest)
            hits = [i for i in (text.find(s, search_from) for s in self.stop) if i >= 0]
            if hits:
                text = text[: min(hits)]
                stopped = True
        self.text = text
        if not (finished or stopped):
            hold = max((len(s) for s in self.stop), default=1) - 1
            ready = text[: len(text) - hold] if hold else text
            ready = ready.rstrip("\ufffd")
        else:
            ready = text
        if len(ready) <= self.emitted:
            return "", stopped
        piece = ready[self.emitted :]
        self.emitted = len(ready)
        return piece, stopped
