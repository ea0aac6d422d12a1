"""Local worker processes: they run under whatever signal handlers the caller installed, but must still die when the
pool ends them (flopwise.data.pipeline.executors)."""

import signal
from pathlib import Path

from flopwise.data.pipeline.executors import run_tasks
from flopwise.train.preempt import StopFlag


def _record_sigterm(path: str) -> None:
    disposition = signal.getsignal(signal.SIGTERM)
    Path(path).write_text("default" if disposition is signal.SIG_DFL else repr(disposition))


def test_workers_die_on_sigterm_even_inside_the_trainers_stop_flag(tmp_path):
    """The trainer prepares its corpus inside StopFlag, whose SIGTERM handler only sets a flag. Forked workers that kept
    it outlived Pool.terminate's SIGTERM whenever they were not already gone, and `flopwise train` hung on a fresh
    cache (make demo). Each worker must start with SIGTERM's default action."""
    paths = [str(tmp_path / f"task{i}") for i in range(4)]
    with StopFlag():
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # the trainer's handler is in place here
        run_tasks(_record_sigterm, paths, "probe", workers=2)
    assert [Path(p).read_text() for p in paths] == ["default"] * 4
