"""The trainer's terminal view: warnings (the trainer's, a skipped step, a rollback) go to stderr like the command's
own, so `flopwise train ... > log` keeps them on the terminal and the log holds the progress lines only."""

from flopwise.cli.train import TrainView


def test_warnings_skips_and_rollbacks_go_to_stderr_and_progress_lines_to_stdout(capsys):
    view = TrainView(quiet=False)
    view({"event": "warning", "message": "runs/x [a]: checkpoint damaged"})
    view({"event": "skip", "step": 7, "loss": 12.5})
    view({"event": "rollback", "checkpoint": "runs/x/step_00000004", "step": 4})
    view({"event": "log", "step": 8, "loss": 3.25})
    view.close()
    out, err = capsys.readouterr()
    assert "warning: runs/x [a]: checkpoint damaged" in err  # brackets kept: no markup read in a path
    assert "step 7: loss 12.5 skipped" in err and "rolled back to runs/x/step_00000004 (step 4)" in err
    assert "step      8  loss 3.2500" in out
    assert "warning" not in out and "skipped" not in out and "rolled back" not in out
