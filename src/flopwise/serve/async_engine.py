"""Drive the engine from one background thread; hand each request's outputs to its asyncio consumer.

`EngineFrontend` is what the API sees of an engine: submit a request (checked at once), iterate its outputs,
abort it, read the engine's counters. `AsyncEngine` runs the engine in a thread of this process (the
default of `flopwise serve`, and Ray Serve replicas); `flopwise.serve.engine_process.ProcessEngine` runs it
in a process of its own (`--engine-process`).

The thread steps while any request is waiting or running and sleeps otherwise. The event loop never waits
for a step: a request is validated at once (errors are raised to the caller) and handed over through a
queue that the engine thread drains before each step; aborts likewise. A step's outputs reach each event
loop in one callback. A consumer that stops listening (a client that disconnected) aborts its request,
which frees its blocks before the next step."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator

from flopwise.serve.config import RequestError
from flopwise.serve.engine import Engine, EngineInfo
from flopwise.serve.sampling import SamplingParams
from flopwise.serve.sequence import RequestOutput

log = logging.getLogger(__name__)


# The engine thread waits (at most this long) for the event loop to send a step's outputs before it starts
# the next step. Both threads need the GIL for their Python; on a busy machine, handing it back and forth
# at every torch call of a step costs a scheduling delay each time and slowed decoding ~2x; taking turns
# costs only the event loop's own work.
FLUSH_WAIT = 0.05


class EngineDeadError(RuntimeError):
    pass


class EngineFrontend:
    """Streams, timings and metrics of the requests in flight; subclasses hand requests to an engine."""

    def __init__(self, info: EngineInfo, tokenizer, metrics=None):
        self.info = info
        self.tokenizer = tokenizer
        self.metrics = metrics
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._timing: dict[str, list[float]] = {}  # request id -> [arrival, first token, last token]
        self.error: BaseException | None = None

    def stats(self) -> dict:
        raise NotImplementedError

    def shutdown(self) -> None:
        raise NotImplementedError

    def _check(self, prompt_ids: list[int], params: SamplingParams, request_id: str) -> None:
        raise NotImplementedError

    def _hand_over(self, prompt_ids: list[int], params: SamplingParams, request_id: str) -> None:
        raise NotImplementedError

    def _abort(self, request_id: str) -> None:
        raise NotImplementedError

    def submit(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None) -> RequestStream:
        """Queue a request (raises RequestError / QueueFullError at once); iterate the result for its outputs."""
        if self.error is not None:
            raise EngineDeadError(f"engine failed: {self.error}")
        request_id = request_id or uuid.uuid4().hex
        if request_id in self._streams:
            raise RequestError(f"request id {request_id!r} is already in use")
        self._check(prompt_ids, params, request_id)
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), queue)
        self._timing[request_id] = [time.monotonic()]
        self._hand_over(list(prompt_ids), params, request_id)
        if self.error is not None:  # the engine died meanwhile, perhaps after _fail_all had looked at the streams
            queue.put_nowait(EngineDeadError(f"engine failed: {self.error}"))
        return RequestStream(self, request_id, queue)

    def abort(self, request_id: str) -> None:
        self._timing.pop(request_id, None)
        self._abort(request_id)

    def _record(self, out: RequestOutput, now: float) -> None:
        timing = self._timing.get(out.request_id)
        if timing is None:
            return
        if len(timing) == 1:
            timing.append(now)
            if self.metrics is not None:
                self.metrics.ttft.observe(now - timing[0])
        timing[1:] = [timing[1], now]
        if out.finished:
            self._timing.pop(out.request_id, None)
            if self.metrics is not None:
                self.metrics.on_finished(out, timing[0], timing[1], now)

    def _fan_out(self, outputs: list[RequestOutput]) -> list[threading.Event]:
        """Record a step's outputs and send them to their consumers: one wake-up of each event loop; the
        events are set once each loop has run its consumers."""
        now = time.monotonic()
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for out in outputs:
            self._record(out, now)
            target = self._streams.get(out.request_id)
            if target is not None:
                by_loop.setdefault(target[0], []).append((target[1], out))
        here = asyncio._get_running_loop()  # None on the engine thread
        flushed = []
        for loop, items in by_loop.items():
            if loop is here:  # called on the consumers' own event loop: hand over directly
                for queue, out in items:
                    queue.put_nowait(out)
                continue
            done = threading.Event()
            try:
                loop.call_soon_threadsafe(_deliver, items, done)
            except RuntimeError:  # that event loop is closed (its server stopped)
                continue
            flushed.append(done)
        return flushed

    def _fail_all(self, exc: BaseException) -> None:
        """The engine is gone: every request in flight ends with EngineDeadError; new ones are refused."""
        self.error = exc
        for loop, queue in list(self._streams.values()):
            try:
                loop.call_soon_threadsafe(queue.put_nowait, EngineDeadError(f"engine failed: {exc}"))
            except RuntimeError:
                pass


class AsyncEngine(EngineFrontend):
    def __init__(self, engine: Engine, metrics=None):
        super().__init__(engine.info, engine.tokenizer, metrics)
        self.engine = engine
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._incoming: deque = deque()  # (prompt ids, params, request id) accepted, not yet in the engine
        self._aborts: deque = deque()  # request ids to abort before the next step
        self._thread = threading.Thread(target=self._run, name="flopwise-engine", daemon=True)
        self._thread.start()

    def stats(self) -> dict:
        return self.engine.stats()  # counters only: read without waiting for a step (at most one step old)

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        if self.engine.config.threads:
            import torch

            torch.set_num_threads(self.engine.config.threads)
        while not self._stopped:
            try:
                with self._lock:
                    self._take_handovers()
                    busy = self.engine.has_work()
                if not busy:
                    self._wake.wait(0.25)
                    self._wake.clear()
                    continue
                with self._lock:
                    outputs = self.engine.step()
                    stats = self.engine.stats()
            except BaseException as exc:  # the engine is broken: fail every request, refuse new ones
                log.exception("engine step failed")
                self._fail_all(exc)
                return
            for done in self._fan_out(outputs):  # see FLUSH_WAIT
                done.wait(FLUSH_WAIT)
            if self.metrics is not None:
                self.metrics.on_step(stats)

    def _take_handovers(self) -> None:
        """Add the requests submitted and drop the ones aborted since the last step (engine thread, locked)."""
        while self._incoming:
            prompt_ids, params, request_id = self._incoming.popleft()
            if request_id not in self._streams:  # its consumer left before it started
                continue
            try:
                self.engine.add_request(prompt_ids, params, request_id)
            except Exception as exc:  # noqa: BLE001 - checked at submit; a race (queue filled meanwhile) ends here
                target = self._streams.get(request_id)
                if target is not None:
                    target[0].call_soon_threadsafe(target[1].put_nowait, exc)
        while self._aborts:
            request_id = self._aborts.popleft()
            if self.engine.abort(request_id) and self.metrics is not None:
                self.metrics.aborted.inc()

    def _check(self, prompt_ids: list[int], params: SamplingParams, request_id: str) -> None:
        self.engine.check_request(prompt_ids, params, request_id, queued=len(self._incoming))

    def _hand_over(self, prompt_ids: list[int], params: SamplingParams, request_id: str) -> None:
        self._incoming.append((prompt_ids, params, request_id))
        self._wake.set()

    def _abort(self, request_id: str) -> None:
        self._aborts.append(request_id)
        self._wake.set()


def _deliver(items: list[tuple[asyncio.Queue, RequestOutput]], done: threading.Event) -> None:
    for queue, out in items:
        queue.put_nowait(out)
    # Runs after the consumers woken above have sent their chunks (callbacks run in order).
    asyncio.get_running_loop().call_soon(done.set)


class RequestStream:
    """One request's outputs, in order. Leaving the iteration early (or `close()`) aborts the request."""

    def __init__(self, owner: EngineFrontend, request_id: str, queue: asyncio.Queue):
        self.owner = owner
        self.request_id = request_id
        self.queue = queue
        self.finished = False

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[RequestOutput]:
        try:
            while not self.finished:
                out = await self.queue.get()
                if isinstance(out, BaseException):
                    raise out
                self.finished = out.finished
                yield out
        finally:
            self.close()

    def close(self) -> None:
        self.owner._streams.pop(self.request_id, None)
        if not self.finished:
            self.finished = True
            self.owner.abort(self.request_id)
