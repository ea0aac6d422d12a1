"""Drive the engine from one background thread; hand each request's outputs to its asyncio consumer.

The thread steps while any request is waiting or running and sleeps otherwise. A consumer that stops
listening (a client that disconnected) aborts its request, which frees its blocks before the next step."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator

from flopwise.serve.engine import Engine
from flopwise.serve.sampling import SamplingParams
from flopwise.serve.sequence import RequestOutput

log = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    pass


class AsyncEngine:
    def __init__(self, engine: Engine, metrics=None):
        self.engine = engine
        self.metrics = metrics
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._timing: dict[str, list[float]] = {}  # request id -> [arrival, first token, last token]
        self._stopped = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="flopwise-engine", daemon=True)
        self._thread.start()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def stats(self) -> dict:
        with self._lock:
            return self.engine.stats()

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        if self.engine.config.threads:
            import torch

            torch.set_num_threads(self.engine.config.threads)
        while not self._stopped:
            with self._lock:
                busy = self.engine.has_work()
            if not busy:
                self._wake.wait(0.25)
                self._wake.clear()
                continue
            try:
                with self._lock:
                    outputs = self.engine.step()
                    stats = self.engine.stats()
            except BaseException as exc:  # the engine is broken: fail every request, refuse new ones
                log.exception("engine step failed")
                self.error = exc
                for loop, queue in list(self._streams.values()):
                    loop.call_soon_threadsafe(queue.put_nowait, EngineDeadError(f"engine failed: {exc}"))
                return
            now = time.monotonic()
            for out in outputs:
                self._record(out, now)
                target = self._streams.get(out.request_id)
                if target is not None:
                    target[0].call_soon_threadsafe(target[1].put_nowait, out)
            if self.metrics is not None:
                self.metrics.on_step(stats)

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

    def submit(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None) -> RequestStream:
        """Queue a request (raises RequestError / QueueFullError at once); iterate the result for its outputs."""
        if self.error is not None:
            raise EngineDeadError(f"engine failed: {self.error}")
        request_id = request_id or uuid.uuid4().hex
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), queue)
        try:
            with self._lock:
                self.engine.add_request(prompt_ids, params, request_id)
        except BaseException:
            self._streams.pop(request_id, None)
            raise
        self._timing[request_id] = [time.monotonic()]
        self._wake.set()
        return RequestStream(self, request_id, queue)

    def abort(self, request_id: str) -> None:
        with self._lock:
            aborted = self.engine.abort(request_id)
        self._timing.pop(request_id, None)
        if aborted and self.metrics is not None:
            self.metrics.aborted.inc()


class RequestStream:
    """One request's outputs, in order. Leaving the iteration early (or `close()`) aborts the request."""

    def __init__(self, owner: AsyncEngine, request_id: str, queue: asyncio.Queue):
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
