"""Preemption: SIGTERM asks a run to stop; the trainer finishes its current step, saves a checkpoint and exits
with PREEMPTED_EXIT, so a scheduler (flopwise.cluster.service) can tell "stopped as asked, resumable with
--resume" from a crash. 143 is what a shell reports for a process ended by SIGTERM (128 + 15): a caller that
only knows that convention reads it the same way.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from flopwise.errors import FlopwiseError

PREEMPTED_EXIT = 143


class Preempted(FlopwiseError):
    """The run was asked to stop (SIGTERM) and saved a checkpoint at `step`."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"preempted (SIGTERM): checkpoint at step {step} saved in {checkpoint}; continue with --resume")
        self.step, self.checkpoint = step, checkpoint


class StopFlag:
    """Set by SIGTERM while installed (only from the main thread, where Python runs signal handlers). Not in a
    multi-process run (WORLD_SIZE > 1): ranks could see the signal at different steps and wait for each other
    in the checkpoint's collectives; there SIGTERM keeps its default (the ranks exit; resume from the last
    periodic checkpoint). Agreeing on the stop step across ranks is left to the launcher work (issue 15)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread() and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, _signum, _frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
