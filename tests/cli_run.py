"""Run the `flopwise` command in-process, as a test does: its exit status and what it printed."""

from __future__ import annotations

from flopwise.cli import main


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `flopwise ARGS`; arguments are turned into strings (paths)."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err
