"""The torchrun agent of `flopwise train --nproc N`: torch.distributed.run, without its own reporting.

The launcher (flopwise.train.launch) reports a failure once, from what the ranks wrote to the error folder;
torchrun's logging and its ChildFailedError traceback would say it again. This process also dies with the
launcher (Linux parent-death signal): SIGTERM makes torchrun stop every rank before it exits."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
from pathlib import Path

ERROR_DIR_ENV = "FLOPWISE_ERROR_DIR"  # where ranks and the agent write what went wrong
LAUNCHER_ENV = "FLOPWISE_LAUNCHER_PID"


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.environ.get(LAUNCHER_ENV) and os.getppid() != int(os.environ[LAUNCHER_ENV]):
        os.kill(os.getpid(), signal.SIGTERM)  # the launcher died before prctl took effect


def _write_failures(failures: dict) -> None:
    folder = os.environ.get(ERROR_DIR_ENV)
    if not folder:
        return
    rows = {str(rank): {"exitcode": f.exitcode, "signal": f.signal_name() if f.exitcode < 0 else None}
            for rank, f in failures.items()}
    (Path(folder) / "agent.json").write_text(json.dumps(rows))


def main(argv: list[str] | None = None) -> None:
    _die_with_parent()
    logging.disable(logging.ERROR)  # torchrun's own failure logs: the launcher reports once
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except ChildFailedError as exc:
        _write_failures(exc.failures)
        sys.exit(1)
    except SignalException as exc:  # the workers are stopped already (torchrun's shutdown)
        sys.exit(128 + int(exc.sigval))


if __name__ == "__main__":
    main()
