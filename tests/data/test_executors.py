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


SLOW_SECOND_WORKER = """
import os, sys, time
from flopwise.data.pipeline import executors
from flopwise.train.preempt import StopFlag

original = executors._worker_signals

def slow_start():
    # the second worker is slow to start: the pool's terminate reaches it before its initializer has run
    try:
        os.close(os.open(sys.argv[1] + "/first", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        time.sleep(2.0)
    original()

executors._worker_signals = slow_start
with StopFlag():
    executors.run_tasks(len, ["a", "b"], "probe", workers=2)
print("done")
"""


def test_a_worker_terminated_before_its_initializer_ran_still_dies(tmp_path):
    """The race behind a hung CI run (2026-12-05): the pool was done and terminated while one worker was still
    starting with the parent's flag-setting SIGTERM handler, so the signal only set a flag; the worker then reset
    its handler and waited for tasks, and the pool's join waited for it forever. SIGTERM is blocked from the fork
    until the worker's own handler is in place, so it stays pending and ends the worker then."""
    import os
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", SLOW_SECOND_WORKER, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the parent and its stuck worker
        proc.communicate()
        raise AssertionError("run_tasks hung: a worker survived the pool's SIGTERM") from None
    assert proc.returncode == 0 and out.strip() == "done"
