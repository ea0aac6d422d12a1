"""The layout-parity harness's own failure handling: what it reruns and what it reports as a failed run."""

import json

import pytest
import torch.multiprocessing as mp

from tests.parallel import harness


def _aborted():
    return mp.ProcessExitedException("process 1 terminated with signal SIGABRT", error_index=1, error_pid=1,
                                     exit_code=-6, signal_name="SIGABRT")


def _launcher(failures: list):
    """A stand-in for torch's process launch: raises the next of `failures` (None: the ranks finish and write their
    losses, as _worker does)."""
    calls = []

    def start_processes(fn, args, **kwargs):
        calls.append(args)
        failure = failures[len(calls) - 1] if len(calls) <= len(failures) else None
        if failure is not None:
            raise failure
        for run in args[3]:
            with open(harness._result_file(run), "w") as fh:
                json.dump({1: 5.0, 2: 4.5}, fh)

    return start_processes, calls


def _runs(tmp_path):
    return [harness.Run(key, 2, ("parallel.dp=2",), 2, str(tmp_path / key)) for key in ("a", "b")]


def test_a_rank_killed_by_a_signal_is_rerun_once_with_a_warning(tmp_path, monkeypatch):
    start, calls = _launcher([_aborted()])
    monkeypatch.setattr(harness.mp, "start_processes", start)
    with pytest.warns(RuntimeWarning, match="a: process 1 terminated with signal SIGABRT; rerun once"):
        results = harness.run_batch(tmp_path, _runs(tmp_path))
    assert results == {"a": {1: 5.0, 2: 4.5}, "b": {1: 5.0, 2: 4.5}}
    assert len(calls) == 2 and [r.key for r in calls[1][3]] == ["a", "b"]  # the aborted run and those after it


def test_a_run_that_aborts_again_fails_and_a_python_error_is_not_rerun(tmp_path, monkeypatch):
    start, calls = _launcher([_aborted(), _aborted()])
    monkeypatch.setattr(harness.mp, "start_processes", start)
    with pytest.warns(RuntimeWarning):
        results = harness.run_batch(tmp_path, _runs(tmp_path))
    assert isinstance(results["a"], RuntimeError) and "terminated with signal SIGABRT" in str(results["a"])
    assert results["b"] == {1: 5.0, 2: 4.5} and len(calls) == 3
    start, calls = _launcher([mp.ProcessRaisedException("ValueError: losses differ", 0, 1)])
    monkeypatch.setattr(harness.mp, "start_processes", start)
    results = harness.run_batch(tmp_path, _runs(tmp_path / "again"))
    assert isinstance(results["a"], RuntimeError) and "losses differ" in str(results["a"]) and len(calls) == 2
