"""The serving engine: requests in, one batched model step at a time, text out.

`Engine.step()` schedules (continuous batching, chunked prefill, preemption by recompute), runs one paged
forward over all scheduled tokens, samples one token for every sequence that reached the end of its
tokens, and returns what each request produced. It is synchronous and single-threaded; the HTTP server
drives it from a process of its own (`flopwise.serve.engine_process`) or from a background thread
(`flopwise.serve.async_engine`)."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

import torch

from flopwise.serve.block_pool import BlockPool
from flopwise.serve.config import EngineConfig, QueueFullError, RequestError
from flopwise.serve.loader import ServedModel
from flopwise.serve.paged import PagedKVCache, SeqChunk, build_batch, paged_forward, plan_num_blocks
from flopwise.serve.sampling import SamplingParams, request_generator, sample, token_logprobs
from flopwise.serve.scheduler import Scheduler
from flopwise.serve.sequence import RequestOutput, Sequence, Status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineInfo:
    """What the API needs to know of an engine (in this process or another) to check and answer requests."""

    name: str
    max_model_len: int
    vocab_size: int
    eod_id: int | None
    max_waiting: int
    block_size: int
    num_blocks: int
    block_bytes: int

    def check(self, prompt_ids: list[int], params: SamplingParams, waiting: int) -> None:
        """Raise RequestError / QueueFullError if a request cannot be added while `waiting` others wait."""
        if not prompt_ids:
            raise RequestError("the prompt is empty: give at least one token", "prompt")
        if min(prompt_ids) < 0 or max(prompt_ids) >= self.vocab_size:
            raise RequestError(f"prompt token ids must be in [0, {self.vocab_size})", "prompt")
        limit = self.max_model_len
        wanted = len(prompt_ids) + (params.max_tokens or 1)
        if len(prompt_ids) >= limit or (params.max_tokens is not None and wanted > limit):
            raise RequestError(
                f"this model's maximum context length is {limit} tokens; the request has {len(prompt_ids)} prompt "
                f"tokens" + (f" and asks for {params.max_tokens} more" if params.max_tokens else ""), "prompt")
        if waiting >= self.max_waiting:
            raise QueueFullError(f"{waiting} requests are waiting; try again later")


class Engine:
    """`detokenize=False`: outputs carry token ids only (text "", stop strings not applied): the API process
    detokenises when the engine runs in a process of its own."""

    def __init__(self, served: ServedModel, config: EngineConfig | None = None, detokenize: bool = True):
        self.served = served
        self.model = served.model
        self.tokenizer = served.tokenizer
        self.eod_id = served.eod_id
        self.config = config = config or EngineConfig()
        self.device = served.device
        dtype = self.model.tok_embeddings.weight.dtype
        self.num_blocks, self.block_bytes = plan_num_blocks(self.model.cfg, config, self.device, dtype)
        self.cache = PagedKVCache(self.model.cfg, self.num_blocks, config.block_size, config.max_num_seqs,
                                  self.device, dtype, block_states=config.enable_prefix_caching,
                                  attention=config.attention)
        self.pool = BlockPool(self.num_blocks, config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.pool, on_prefix_hit=lambda s, b: self.cache.restore_filter(s.slot, b))
        self.requests: dict[str, Sequence] = {}
        self.steps = 0
        self.detokenize = detokenize
        self.info = EngineInfo(served.name, served.max_model_len, self.model.cfg.vocab_size, self.eod_id,
                               config.max_waiting, config.block_size, self.num_blocks, self.block_bytes)
        log.info("KV cache: %d blocks of %d tokens (%.1f MiB)", self.num_blocks, config.block_size,
                 self.num_blocks * self.block_bytes / 2**20)

    @property
    def max_model_len(self) -> int:
        return self.served.max_model_len

    # -- requests ------------------------------------------------------------------------------
    def add_request(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None) -> str:
        request_id = request_id or uuid.uuid4().hex
        self.check_request(prompt_ids, params, request_id)
        limit = self.max_model_len
        max_tokens = min(params.max_tokens or limit, limit - len(prompt_ids))
        seq = Sequence(request_id, list(prompt_ids), params, max_tokens, request_generator(params.seed, self.device))
        self.requests[request_id] = seq
        self.scheduler.add(seq)
        return request_id

    def check_request(self, prompt_ids: list[int], params: SamplingParams, request_id: str, queued: int = 0) -> None:
        """Raise RequestError / QueueFullError if the request cannot be added; changes nothing (so another
        thread may call it while a step runs). `queued`: requests accepted but not yet added."""
        if request_id in self.requests:
            raise RequestError(f"request id {request_id!r} is already in use")
        self.info.check(prompt_ids, params, len(self.scheduler.waiting) + queued)

    def abort(self, request_id: str) -> bool:
        """Stop a request now and free its blocks. False if it is not (or no longer) here."""
        seq = self.requests.pop(request_id, None)
        if seq is None:
            return False
        self.scheduler.finish(seq, "abort")
        return True

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # -- one step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> list[RequestOutput]:
        scheduled = self.scheduler.schedule()
        if not scheduled:
            return []
        chunks, gained = [], []
        for seq, n in scheduled:
            completes = seq.num_computed + n == seq.num_tokens
            logits_from = n - 1 if completes else n
            if seq.wants_prompt_logprobs:
                logits_from = 0
            if len(seq.block_table) > seq.synced_blocks:  # blocks gained since the last step: into the table tensor
                gained.extend((seq.slot, i, seq.block_table[i]) for i in range(seq.synced_blocks, len(seq.block_table)))
                seq.synced_blocks = len(seq.block_table)
            chunks.append(SeqChunk(seq.tokens(seq.num_computed, seq.num_computed + n), seq.num_computed,
                                   seq.block_table, seq.slot, logits_from))
        self.cache.sync_tables(gained)
        batch = build_batch(chunks, self.config.block_size, self.device, self.model.cfg.lfa)
        logits = paged_forward(self.model, self.cache, batch)
        self.steps += 1

        outputs, sampled_rows, sampled = [], [], []
        row = 0
        for (seq, n), chunk in zip(scheduled, chunks, strict=True):
            rows = n - chunk.logits_from
            start = seq.num_computed
            seq.num_computed += n
            for block, name in seq.name_full_blocks(self.config.block_size):
                self.pool.name(block, name)
            if seq.wants_prompt_logprobs:
                self._score_prompt(seq, logits[row : row + rows], start)
            if seq.num_computed == seq.num_tokens:
                sampled_rows.append(row + rows - 1)
                sampled.append(seq)
            row += rows
        if sampled:
            rows = logits if len(sampled_rows) == logits.shape[0] else logits[sampled_rows]  # rows ascend: all = all
            tokens = sample(rows, [s.params for s in sampled], [s.generator for s in sampled])
            want = [i for i, s in enumerate(sampled) if s.params.logprobs is not None]
            lps = {}
            if want:
                top_n = max(sampled[i].params.logprobs for i in want)
                for i, lp in zip(want, token_logprobs(rows[want], [tokens[i] for i in want], top_n), strict=True):
                    lp.top = lp.top[: sampled[i].params.logprobs]
                    lps[i] = lp
            now = time.monotonic()
            for i, (seq, token) in enumerate(zip(sampled, tokens, strict=True)):
                outputs.append(self._append(seq, token, lps.get(i), now))
        return outputs

    def _score_prompt(self, seq: Sequence, logits: torch.Tensor, start: int) -> None:
        """Log-probabilities of prompt tokens start+1 .. from the logits of positions start .. (echo)."""
        if start == 0:
            seq.scored = []
        prompt = seq.prompt_ids
        chosen = [(i, prompt[start + i + 1]) for i in range(logits.shape[0]) if start + i + 1 < len(prompt)]
        if chosen:
            rows = [i for i, _ in chosen]
            seq.scored.extend(token_logprobs(logits[rows], [t for _, t in chosen], seq.params.prompt_logprobs))
        if start + logits.shape[0] >= len(prompt):
            seq.prompt_logprobs = [None, *seq.scored]  # the first token has no context to be scored from

    def _append(self, seq: Sequence, token: int, logprob, now: float) -> RequestOutput:
        params = seq.params
        if seq.first_token_time is None:
            seq.first_token_time = now
        if (token == self.eod_id and not params.ignore_eos) or token in params.stop_token_ids:
            seq.finish_reason = "stop"
        else:
            seq.output_ids.append(token)
            if logprob is not None:
                seq.logprobs.append(logprob)
            if len(seq.output_ids) >= seq.max_tokens or seq.num_tokens >= self.max_model_len:
                seq.finish_reason = "length"
        text = seq.update_text(self.tokenizer) if self.detokenize else ""
        if seq.finish_reason is not None:
            self.scheduler.finish(seq, seq.finish_reason)
            self.requests.pop(seq.request_id, None)
        new_ids = seq.output_ids[seq.sent_tokens :]
        new_lps = seq.logprobs[seq.sent_tokens :] if params.logprobs is not None else []
        seq.sent_tokens = len(seq.output_ids)
        prompt_lps = None
        if seq.prompt_logprobs is not None and not seq.sent_prompt_logprobs:
            prompt_lps, seq.sent_prompt_logprobs = seq.prompt_logprobs, True
        return RequestOutput(seq.request_id, text, new_ids, new_lps, seq.status is Status.FINISHED,
                             seq.finish_reason if seq.status is Status.FINISHED else None, len(seq.prompt_ids),
                             len(seq.output_ids), prompt_lps)

    # -- convenience ---------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[list[int]]:
        """Run prompts to completion (all submitted at once); returns each one's output token ids."""
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, params_list, strict=True)]
        done: dict[str, list[int]] = {i: [] for i in ids}
        remaining = set(ids)
        while remaining:
            for out in self.step():
                if out.request_id in done:
                    done[out.request_id].extend(out.token_ids)
                    if out.finished:
                        remaining.discard(out.request_id)
        return [done[i] for i in ids]

    def stats(self) -> dict:
        return {
            "running": len(self.scheduler.running),
            "waiting": len(self.scheduler.waiting),
            "kv_cache_usage": self.pool.usage,
            "num_blocks": self.num_blocks,
            "free_blocks": self.pool.num_free,
            "preemptions": self.scheduler.preemptions,
            "prefix_cache_queries": self.pool.queries,
            "prefix_cache_hits": self.pool.hits,
            "steps": self.steps,
        }

