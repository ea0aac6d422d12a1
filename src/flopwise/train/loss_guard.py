"""Loss guard: skip steps whose loss is non-finite or spikes; ask for a rollback after repeated ones.

A spike is a loss above `spike_factor` x the mean of the last `window` accepted losses. Its gradients
are dropped (no optimizer step). After `max_consecutive` bad steps in a row the trainer rolls back to
the last checkpoint, keeping the data position so the offending batches are not replayed."""

from __future__ import annotations

import math
from collections import deque
from enum import StrEnum

from flopwise.train.config import GuardSection


class Verdict(StrEnum):
    OK = "ok"
    SKIP = "skip"
    ROLLBACK = "rollback"


class LossGuard:
    def __init__(self, cfg: GuardSection):
        self.cfg = cfg
        self.history: deque[float] = deque(maxlen=cfg.window)
        self.consecutive = 0
        self.skipped = 0
        self.rollbacks = 0

    def check(self, loss: float) -> Verdict:
        if not self.cfg.enabled:
            return Verdict.OK
        bad = not math.isfinite(loss)
        if not bad and len(self.history) >= self.cfg.min_history:
            bad = loss > self.cfg.spike_factor * (sum(self.history) / len(self.history))
        if not bad:
            self.history.append(loss)
            self.consecutive = 0
            return Verdict.OK
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.cfg.max_consecutive:
            self.consecutive = 0
            self.rollbacks += 1
            return Verdict.ROLLBACK
        return Verdict.SKIP

    def state_dict(self) -> dict:
        return {
            "history": list(self.history),
            "consecutive": self.consecutive,
            "skipped": self.skipped,
            "rollbacks": self.rollbacks,
        }

    def load_state_dict(self, state: dict) -> None:
        self.history = deque(state["history"], maxlen=self.cfg.window)
        self.consecutive = state["consecutive"]
        self.skipped = state["skipped"]
        self.rollbacks = state["rollbacks"]
