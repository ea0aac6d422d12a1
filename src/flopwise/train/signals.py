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


def find_wrapped(exc: BaseException, types: type | tuple) -> BaseException | None:
    """The first exception of `types` in `exc`, its causes and contexts, and the per-rank failures that
    torch.distributed.checkpoint wraps (CheckpointException.failures): a Stopped raised while DCP writes
    comes back inside one."""
    seen, stack = set(), [exc]
    while stack:
        item = stack.pop(0)
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, types):
            return item
        failures = getattr(item, "failures", None)
        values = list(failures.values()) if isinstance(failures, dict) else []
        stack += [item.__cause__, item.__context__]
        stack += [v[0] if isinstance(v, tuple) and v else v for v in values]
    return None


def reraise_stop(exc: BaseException) -> None:
    """Raise the Stopped or KeyboardInterrupt wrapped inside `exc`, if any."""
    stop = find_wrapped(exc, (Stopped, KeyboardInterrupt))
    if stop is not None:
        raise stop


def _raise_stopped(signum: int) -> None:
    raise Stopped(signum)


def stop_on_signals() -> contextlib.AbstractContextManager:
    """Inside the block SIGINT and SIGTERM raise Stopped."""
    return on_signals(_raise_stopped)
