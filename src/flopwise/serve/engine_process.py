"""The engine in a process of its own, beside the API process (vLLM's split of AsyncLLM and EngineCore).

The engine process holds the model, the KV cache, the scheduler and the sampler, and steps while it has
work. The API process (HTTP, tokenising, detokenising, stop strings, streaming, metrics) talks to it over
two pipes of pickled messages:

  to the engine    (lists of) ("add", prompt ids, SamplingParams, request id) | ("abort", [request ids]) | ("stop",)
  from the engine  ("ready", EngineInfo) | ("failed", exception)   at start
                   ("step", [RequestOutput], stats, requests added so far)   after every step
                   ("stats", stats, requests added so far)   after requests were added or aborted, when idle
                   ("reject", request id, exception)   a request the engine refused (the queue filled)
                   ("dead", message)   a step raised; the process then exits

Two processes, two GILs: a step never waits for the event loop, nor the event loop for a step, so with a core
to spare the two run at once (where every core is busy it gains nothing: benchmarks/RESULTS.md, Serving;
`flopwise serve --engine-process`, not the default). In the API process a reader
thread waits in the pipe (without the GIL) and hands each message, unopened, to the event loop, which
unpickles it, detokenises and wakes the requests' consumers; a sender thread writes to the engine, so a
full pipe never blocks the event loop.

If the engine process dies, every request in flight ends with EngineDeadError (HTTP 503) and /health fails.
It never outlives the API process: it exits when its request pipe closes (the API process ended, however)
and `shutdown()` stops it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import pickle
import queue as queue_mod
import signal
import threading
from pathlib import Path

from flopwise.errors import FlopwiseError
from flopwise.serve.async_engine import EngineDeadError, EngineFrontend
from flopwise.serve.config import EngineConfig
from flopwise.serve.engine import EngineInfo
from flopwise.serve.sampling import SamplingParams
from flopwise.serve.sequence import Detokenizer, RequestOutput

log = logging.getLogger(__name__)

START_TIMEOUT = 900.0  # seconds for the engine process to load the model


class EngineStartError(FlopwiseError):
    """The engine process did not start (the model did not load, the process died)."""


# -- the engine process ---------------------------------------------------------------------------------
def run_engine_process(requests, outputs, checkpoint: str, config: dict, model_name: str | None) -> None:
    """Entry point of the engine process: load, report ready, then step while there is work."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server stops us
    try:
        import torch

        from flopwise.serve.engine import Engine
        from flopwise.serve.loader import load_served_model

        engine_config = EngineConfig(**config)
        if engine_config.threads:
            torch.set_num_threads(engine_config.threads)
        served = load_served_model(checkpoint, engine_config.device, engine_config.dtype, model_name)
        engine = Engine(served, engine_config, detokenize=False)
    except BaseException as exc:  # noqa: BLE001 - reported to the API process, which raises it
        outputs.send(("failed", _picklable(exc)))
        return
    outputs.send(("ready", engine.info))
    try:
        _engine_loop(engine, requests, outputs)
    except (EOFError, OSError):  # the API process is gone (its end of a pipe closed)
        pass


def _engine_loop(engine, requests, outputs) -> None:
    added = 0
    while True:
        changed = False
        timeout = 0 if engine.has_work() else None  # idle: block until a message (or the pipe closes)
        while requests.poll(timeout):
            timeout = 0
            for msg in requests.recv():  # the sender thread batches what it has
                kind = msg[0]
                if kind == "add":
                    added += 1
                    try:
                        engine.add_request(msg[1], msg[2], msg[3])
                    except Exception as exc:  # noqa: BLE001 - checked in the API; a race (queue filled) ends here
                        outputs.send(("reject", msg[3], _picklable(exc)))
                elif kind == "abort":
                    for request_id in msg[1]:
                        engine.abort(request_id)
                elif kind == "stop":
                    return
                changed = True
        if engine.has_work():
            try:
                step_outputs = engine.step()
            except Exception as exc:  # noqa: BLE001 - the engine is broken: tell the API, then exit
                log.exception("engine step failed")
                outputs.send(("dead", f"{type(exc).__name__}: {exc}"))
                raise SystemExit(1) from None
            outputs.send(("step", step_outputs, engine.stats(), added))
        elif changed:
            outputs.send(("stats", engine.stats(), added))


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return FlopwiseError(f"{type(exc).__name__}: {exc}")


# -- the API process's side ---------------------------------------------------------------------------
class ProcessEngine(EngineFrontend):
    """The API's handle on an engine process: the same interface as AsyncEngine."""

    def __init__(self, checkpoint: str | Path, config: EngineConfig, model_name: str | None = None,
                 metrics=None, start_timeout: float = START_TIMEOUT):
        from flopwise.serve.loader import load_tokenizer
        from flopwise.train.checkpoint import resolve_checkpoint

        directory = resolve_checkpoint(checkpoint)  # a bad checkpoint fails here, before a process starts
        tokenizer = load_tokenizer(directory)
        # spawn, not fork: a forked copy of a process that has run torch's thread pools can deadlock
        ctx = multiprocessing.get_context("spawn")
        requests_r, self._requests = ctx.Pipe(duplex=False)
        self._outputs, outputs_w = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=run_engine_process, name="flopwise-engine", daemon=True,
                                   args=(requests_r, outputs_w, str(directory), dataclasses.asdict(config), model_name))
        self.process.start()
        requests_r.close()
        outputs_w.close()
        try:
            info = self._wait_ready(start_timeout)
        except BaseException:
            self._stop_process(0)
            raise
        if metrics is None:
            from flopwise.serve.metrics import ServeMetrics

            metrics = ServeMetrics(info.name)
        super().__init__(info, tokenizer, metrics)
        self._stats = {"running": 0, "waiting": 0, "kv_cache_usage": 0.0, "num_blocks": info.num_blocks,
                       "free_blocks": info.num_blocks, "preemptions": 0, "prefix_cache_queries": 0,
                       "prefix_cache_hits": 0, "steps": 0}
        self._sent = 0  # requests handed to the engine
        self._seen = 0  # of them, the ones the engine had taken in by its last message
        self._text: dict[str, tuple[Detokenizer, list[int]]] = {}  # request id -> its detokenizer, output ids
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the server's event loop (set at the first request)
        self._outbox: queue_mod.SimpleQueue = queue_mod.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name="flopwise-engine-sender", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="flopwise-engine-reader", daemon=True)
        self._sender.start()
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def _wait_ready(self, timeout: float) -> EngineInfo:
        import time

        deadline = time.monotonic() + timeout
        while not self._outputs.poll(0.1):
            if not self.process.is_alive():
                raise EngineStartError(f"the engine process exited with code {self.process.exitcode} while loading")
            if time.monotonic() > deadline:
                raise EngineStartError(f"the engine process did not load the model within {timeout:.0f} s")
        try:
            kind, payload = self._outputs.recv()
        except EOFError:
            self.process.join(5)
            raise EngineStartError(f"the engine process exited with code {self.process.exitcode} while loading") from None
        if kind == "failed":
            raise payload
        return payload

    # -- requests ---------------------------------------------------------------------------------
    def stats(self) -> dict:
        return dict(self._stats)  # as of the engine's last message (at most one step old)

    def _check(self, prompt_ids: list[int], params: SamplingParams, request_id: str) -> None:
        self.info.check(prompt_ids, params, self._stats["waiting"] + self._sent - self._seen)

    def _hand_over(self, prompt_ids: list[int], params: SamplingParams, request_id: str) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._text[request_id] = (Detokenizer(params.stop), [])
        self._sent += 1
        self._outbox.put(("add", prompt_ids, params, request_id))

    def _abort(self, request_id: str) -> None:
        if self._text.pop(request_id, None) is not None:  # still running: free its blocks in the engine
            self._outbox.put(("abort", [request_id]))
            if self.metrics is not None:
                self.metrics.aborted.inc()

    # -- the threads --------------------------------------------------------------------------------
    def _send_loop(self) -> None:
        while True:
            batch = [self._outbox.get()]
            while True:
                try:
                    batch.append(self._outbox.get_nowait())
                except queue_mod.Empty:
                    break
            try:
                self._requests.send(batch)
            except (OSError, ValueError):  # the engine process is gone: the reader reports it
                return
            if batch[-1][0] == "stop":
                return

    def _read_loop(self) -> None:
        """Wait for the engine's messages (without the GIL) and have the event loop handle each one: the
        reader thread and the event loop take one turn per message rather than contending for the GIL."""
        while True:
            try:
                data = self._outputs.recv_bytes()
            except (EOFError, OSError):
                if not self._stopping and self.error is None:
                    self.process.join(2)
                    exc = EngineDeadError(f"the engine process exited (code {self.process.exitcode})")
                    self.error = exc  # /health fails at once; requests in flight end after their last outputs
                    self._in_loop(self._fail_all, exc)
                return
            self._in_loop(self._handle, data)

    def _in_loop(self, fn, arg) -> None:
        """fn(arg) on the requests' event loop, in order; here if there is none yet (or it has closed)."""
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(fn, arg)
                return
            except RuntimeError:  # that event loop is closed (its server stopped)
                pass
        fn(arg)

    def _handle(self, data: bytes) -> None:
        msg = pickle.loads(data)
        kind = msg[0]
        if kind == "step":
            _, outputs, self._stats, self._seen = msg
            self._fan_out(self._detokenize(outputs))
            if self.metrics is not None:
                self.metrics.on_step(self._stats)
        elif kind == "stats":
            _, self._stats, self._seen = msg
            if self.metrics is not None:
                self.metrics.on_step(self._stats)
        elif kind == "reject":
            _, request_id, exc = msg
            self._text.pop(request_id, None)
            target = self._streams.get(request_id)
            if target is not None:
                try:
                    target[0].call_soon_threadsafe(target[1].put_nowait, exc)
                except RuntimeError:  # its event loop is closed
                    pass
        elif kind == "dead":
            self._fail_all(EngineDeadError(msg[1]))

    def _detokenize(self, outputs: list[RequestOutput]) -> list[RequestOutput]:
        """Text for each output; a stop string ends its request here (and aborts it in the engine)."""
        kept, stopped = [], []
        for out in outputs:
            state = self._text.get(out.request_id)
            if state is None:  # aborted, or ended by a stop string a step ago
                continue
            detokenizer, output_ids = state
            output_ids.extend(out.token_ids)
            out.text, hit = detokenizer.update(self.tokenizer, output_ids, out.finished)
            if hit:
                if not out.finished:
                    stopped.append(out.request_id)
                out.finished, out.finish_reason = True, "stop"
            if out.finished:
                self._text.pop(out.request_id, None)
            kept.append(out)
        if stopped:
            self._outbox.put(("abort", stopped))
        return kept

    # -- shutdown -------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop the engine process (at once if it does not stop within a few seconds); idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self._outbox.put(("stop",))
        self._stop_process(10)
        self._reader.join(timeout=5)
        self._sender.join(timeout=5)
        for conn in (self._requests, self._outputs):
            conn.close()

    def _stop_process(self, grace: float) -> None:
        self.process.join(grace)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
