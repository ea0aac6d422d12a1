"""Iteration-level scheduling (Yu et al. 2022, Orca): which sequences run in the next step, and how many
tokens each, under a token budget per step and a fixed block pool.

Order of service: running sequences that decode (one token each) first, then running sequences still in
prefill, then waiting requests in arrival order. A prompt longer than the remaining budget is prefilled in
chunks over several steps, so decoding never stalls behind it. When a running sequence needs a block and
none is free, the most recently admitted sequence is preempted: its blocks are released (their prefix-cache
names survive) and it goes back to the front of the queue, to be recomputed when there is room."""

from __future__ import annotations

import math
from collections import deque

from flopwise.serve.block_pool import BlockPool, prefix_hashes
from flopwise.serve.config import EngineConfig
from flopwise.serve.sequence import Sequence, Status


class Scheduler:
    def __init__(self, config: EngineConfig, pool: BlockPool, on_prefix_hit=None):
        self.config = config
        self.pool = pool
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.free_slots = list(range(config.max_num_seqs - 1, -1, -1))
        self.preemptions = 0
        self.on_prefix_hit = on_prefix_hit or (lambda seq, block: None)

    # -- bookkeeping ---------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _release(self, seq: Sequence) -> None:
        self.pool.release(seq.block_table)
        seq.block_table = []
        seq.synced_blocks = 0
        seq.num_computed = 0
        if seq.slot is not None:
            self.free_slots.append(seq.slot)
            seq.slot = None

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status = Status.FINISHED
        seq.finish_reason = seq.finish_reason or reason
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._release(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._release(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def _reserve(self, seq: Sequence, tokens: int) -> bool:
        need = math.ceil((seq.num_computed + tokens) / self.config.block_size) - len(seq.block_table)
        if need <= 0:
            return True
        blocks = self.pool.allocate(need)
        if blocks is None:
            return False
        seq.block_table.extend(blocks)
        return True

    def _reuse_prefix(self, seq: Sequence) -> None:
        """Start from the cached blocks of the longest shared prefix (at least one token is left to compute,
        which gives the logits to sample from)."""
        if seq.wants_prompt_logprobs:
            return  # the prompt's log-probabilities need the logits of every prompt position
        hits = self.pool.lookup(prefix_hashes(seq.token_ids[:-1], self.config.block_size))
        if hits:
            seq.block_table = hits
            seq.block_names = prefix_hashes(seq.token_ids[: len(hits) * self.config.block_size], self.config.block_size)
            seq.num_computed = len(hits) * self.config.block_size

    # -- one step ------------------------------------------------------------------------------
    def schedule(self) -> list[tuple[Sequence, int]]:
        budget = self.config.max_num_batched_tokens
        scheduled: list[tuple[Sequence, int]] = []
        preempted = False
        decoding = [s for s in self.running if s.num_tokens - s.num_computed == 1]
        prefilling = [s for s in self.running if s.num_tokens - s.num_computed > 1]
        for seq in decoding + prefilling:
            if budget == 0:
                break
            if seq.status is not Status.RUNNING:  # preempted earlier in this loop
                continue
            tokens = min(seq.num_tokens - seq.num_computed, budget)
            while not self._reserve(seq, tokens):
                victim = self.running[-1]
                scheduled = [(s, n) for s, n in scheduled if s is not victim]
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq.status is Status.RUNNING:
                scheduled.append((seq, tokens))
                budget -= tokens
        budget = self.config.max_num_batched_tokens - sum(n for _, n in scheduled)
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs and not preempted:
            seq = self.waiting[0]
            if not seq.block_table:
                self._reuse_prefix(seq)
            tokens = min(seq.num_tokens - seq.num_computed, budget)
            if not self._reserve(seq, tokens):
                self._release(seq)
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            seq.slot = self.free_slots.pop()
            if seq.num_computed:
                self.on_prefix_hit(seq, seq.block_table[seq.num_computed // self.config.block_size - 1])
            self.running.append(seq)
            scheduled.append((seq, tokens))
            budget -= tokens
        return scheduled
