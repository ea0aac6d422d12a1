"""SIGINT and SIGTERM end a run the same way: `Stopped` unwinds the stack (locks released, temporary
checkpoint directories left for the next save to clear) and the CLI says where the last checkpoint is.

Stopped derives from BaseException, like KeyboardInterrupt, so `except Exception` blocks do not swallow it."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name + (" (Ctrl-C)" if self.signum == signal.SIGINT else "")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


@contextlib.contextmanager
def on_signals(handler) -> Iterator[None]:
    """Call handler(signum) on SIGINT/SIGTERM inside the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, lambda signum, frame: handler(signum)) for s in SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _raise_stopped(signum: int) -> None:
    raise Stopped(signum)


def stop_on_signals() -> contextlib.AbstractContextManager:
    """Inside the block SIGINT and SIGTERM raise Stopped."""
    return on_signals(_raise_stopped)
