"""The OpenAI-compatible HTTP API (FastAPI): completions, chat completions, models, server-sent-event
streaming, tokenizer endpoints, health and Prometheus metrics.

Errors use OpenAI's shape, {"error": {"message", "type", "param", "code"}}: 400 for a bad request (a prompt
longer than the context, bad parameters), 401 without the API key, 404 for an unknown model, 429 when the
waiting queue is full, 503 when the engine has failed."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from flopwise.serve.async_engine import EngineDeadError, EngineFrontend, RequestStream
from flopwise.serve.chat import TURN_STOPS, render_chat
from flopwise.serve.config import QueueFullError, RequestError
from flopwise.serve.metrics import ServeMetrics
from flopwise.serve.protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from flopwise.serve.sampling import SamplingParams
from flopwise.serve.sequence import RequestOutput

OPEN_PATHS = ("/health", "/metrics", "/docs", "/openapi.json")


@dataclass
class ServerState:
    engine: EngineFrontend
    model_name: str
    api_key: str | None
    metrics: ServeMetrics
    created: int


class ModelNotFound(Exception):
    pass


def error_response(status: int, message: str, kind: str, param: str | None = None, code: str | None = None):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


class _ApiKeyCheck:
    """401 unless the request carries the server's API key (when it has one). Plain ASGI: Starlette's
    BaseHTTPMiddleware would relay every streamed chunk through an extra task and queue."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            request = Request(scope)
            state: ServerState | None = getattr(request.app.state, "flopwise", None)
            if state is not None and state.api_key and not request.url.path.startswith(OPEN_PATHS):
                given = request.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {state.api_key}".encode()):
                    response = error_response(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                                              "invalid_request_error", code="invalid_api_key")
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def build_app() -> FastAPI:
    """The app; `attach(app, ...)` gives it an engine (the Ray deployment attaches one per replica)."""
    app = FastAPI(title="flopwise", description="OpenAI-compatible API of a flopwise model")

    app.add_middleware(_ApiKeyCheck)

    @app.exception_handler(RequestError)
    async def bad_request(_: Request, exc: RequestError):
        return error_response(400, str(exc), "invalid_request_error", exc.param)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error_response(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}",
                              "invalid_request_error", where or None)

    @app.exception_handler(QueueFullError)
    async def queue_full(_: Request, exc: QueueFullError):
        return error_response(429, str(exc), "rate_limit_error", code="queue_full")

    @app.exception_handler(ModelNotFound)
    async def no_model(_: Request, exc: ModelNotFound):
        return error_response(404, str(exc), "invalid_request_error", "model", "model_not_found")

    @app.exception_handler(EngineDeadError)
    async def engine_dead(_: Request, exc: EngineDeadError):
        return error_response(503, str(exc), "server_error")

    def state_of(request: Request, model: str | None = None) -> ServerState:
        state: ServerState = request.app.state.flopwise
        if model and model != state.model_name:
            raise ModelNotFound(f"the model {model!r} does not exist; this server serves {state.model_name!r}")
        return state

    @app.get("/health")
    async def health(request: Request):
        state = request.app.state.flopwise
        if state.engine.error is not None:
            return error_response(503, f"engine failed: {state.engine.error}", "server_error")
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics(request: Request):
        state = state_of(request)
        return Response(state.metrics.render(state.engine.stats()), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        state = state_of(request)
        return {"object": "list", "data": [{
            "id": state.model_name, "object": "model", "created": state.created, "owned_by": "flopwise",
            "max_model_len": state.engine.info.max_model_len}]}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest, request: Request):
        state = state_of(request, body.model)
        if (body.prompt is None) == (body.messages is None):
            raise RequestError("give exactly one of prompt or messages", "prompt")
        text = body.prompt if body.prompt is not None else render_chat(body.messages)
        ids = state.engine.tokenizer.encode(text).ids
        return {"tokens": ids, "count": len(ids), "max_model_len": state.engine.info.max_model_len}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest, request: Request):
        state = state_of(request, body.model)
        vocab = state.engine.info.vocab_size
        if any(not 0 <= t < vocab for t in body.tokens):
            raise RequestError(f"token ids must be in [0, {vocab})", "tokens")
        return {"prompt": state.engine.tokenizer.decode(body.tokens)}

    @app.get("/tokenizer_info")
    async def tokenizer_info(request: Request):
        state = state_of(request)
        info = state.engine.info
        eod = info.eod_id
        return {
            "tokenizer_class": "PreTrainedTokenizerFast", "model_type": "byte-level BPE (HF tokenizers)",
            "vocab_size": info.vocab_size, "max_model_len": info.max_model_len,
            "eos_token": state.engine.tokenizer.id_to_token(eod) if eod is not None else None, "eos_token_id": eod,
            "bos_token": None, "pad_token": None, "chat_template": "see flopwise.serve.chat",
        }

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        state = state_of(request, body.model)
        tok = state.engine.tokenizer
        prompts = _prompts(body.prompt, tok)
        if body.best_of not in (None, body.n):
            raise RequestError("best_of other than n is not supported", "best_of")
        if body.suffix:
            raise RequestError("suffix is not supported", "suffix")
        params = _params(body, body.max_tokens, body.logprobs, [])
        if body.echo and body.logprobs is not None:
            params.prompt_logprobs = body.logprobs
        streams = _submit(state.engine, [ids for ids, _ in prompts], params, body.n)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        prompt_of = [prompts[i // body.n] for i in range(len(streams))]
        if body.stream:
            return _sse(_completion_chunks(state, body, streams, prompt_of, rid, created), streams)
        results = await _collect(streams, request)
        choices, prompt_tokens, out_tokens = [], 0, 0
        for i, res in enumerate(results):
            ids, text = prompt_of[i]
            lp = None
            if body.logprobs is not None:
                lp = _completion_logprobs(tok, ids if body.echo else [], res.prompt_logprobs if body.echo else None,
                                          res.token_ids, res.logprobs, body.logprobs)
            choices.append({"index": i, "text": (text if body.echo else "") + res.text, "logprobs": lp,
                            "finish_reason": res.finish_reason})
            prompt_tokens += len(ids) if i % body.n == 0 else 0
            out_tokens += len(res.token_ids)
        return {"id": rid, "object": "text_completion", "created": created, "model": state.model_name,
                "choices": choices, "usage": _usage(prompt_tokens, out_tokens)}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        state = state_of(request, body.model)
        tok = state.engine.tokenizer
        ids = tok.encode(render_chat(body.messages)).ids
        top = (body.top_logprobs or 0) if body.logprobs else None
        params = _params(body, body.max_completion_tokens or body.max_tokens, top, TURN_STOPS)
        streams = _submit(state.engine, [ids], params, body.n)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return _sse(_chat_chunks(state, body, streams, len(ids), rid, created), streams)
        results = await _collect(streams, request)
        choices = [{"index": i, "message": {"role": "assistant", "content": res.text},
                    "logprobs": _chat_logprobs(tok, res.token_ids, res.logprobs) if body.logprobs else None,
                    "finish_reason": res.finish_reason} for i, res in enumerate(results)]
        return {"id": rid, "object": "chat.completion", "created": created, "model": state.model_name,
                "choices": choices, "usage": _usage(len(ids), sum(len(r.token_ids) for r in results))}

    return app


def attach(app: FastAPI, engine: EngineFrontend, model_name: str, api_key: str | None = None,
           metrics: ServeMetrics | None = None) -> FastAPI:
    app.state.flopwise = ServerState(engine, model_name, api_key, metrics or engine.metrics or ServeMetrics(model_name),
                                     int(time.time()))
    return app


# -- helpers -----------------------------------------------------------------------------------------
def _prompts(prompt, tokenizer) -> list[tuple[list[int], str]]:
    """(token ids, text) for each prompt of a completions request: text, texts, ids or lists of ids."""
    if isinstance(prompt, str):
        return [(tokenizer.encode(prompt).ids, prompt)]
    if not prompt:
        raise RequestError("prompt must not be empty", "prompt")
    if all(isinstance(p, str) for p in prompt):
        return [(tokenizer.encode(p).ids, p) for p in prompt]
    if all(isinstance(p, int) for p in prompt):
        return [(list(prompt), tokenizer.decode(list(prompt)))]
    return [(list(p), tokenizer.decode(list(p))) for p in prompt]


def _params(body, max_tokens: int | None, logprobs: int | None, extra_stops: list[str]) -> SamplingParams:
    if body.n < 1 or body.n > 16:
        raise RequestError(f"n = {body.n}: must be between 1 and 16", "n")
    if body.presence_penalty or body.frequency_penalty:
        raise RequestError("presence_penalty and frequency_penalty are not supported", "presence_penalty")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                          seed=body.seed, stop=stop + extra_stops, stop_token_ids=list(body.stop_token_ids or []),
                          ignore_eos=body.ignore_eos, logprobs=logprobs)


def _submit(engine: EngineFrontend, prompts: list[list[int]], params: SamplingParams, n: int) -> list[RequestStream]:
    """One engine request per prompt and sample (seeds seed, seed + 1, ... for the n samples)."""
    streams: list[RequestStream] = []
    try:
        for ids in prompts:
            for j in range(n):
                p = params
                if j and params.seed is not None:
                    p = SamplingParams(**{**vars(params), "seed": params.seed + j})
                streams.append(engine.submit(ids, p))
    except BaseException:
        for s in streams:
            s.close()
        raise
    return streams


@dataclass
class _Result:
    text: str = ""
    token_ids: list[int] = None
    logprobs: list = None
    prompt_logprobs: list | None = None
    finish_reason: str | None = None

    def add(self, out: RequestOutput) -> None:
        self.text += out.text
        self.token_ids = (self.token_ids or []) + out.token_ids
        self.logprobs = (self.logprobs or []) + out.logprobs
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = out.prompt_logprobs
        if out.finished:
            self.finish_reason = out.finish_reason


async def _merged(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """The outputs of several streams as they come, tagged with the stream's index."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for out in stream:
                await queue.put((i, out))
            await queue.put((i, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            await queue.put((i, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        for s in streams:
            s.close()


async def _collect(streams: list[RequestStream], request: Request) -> list[_Result]:
    """Run requests to the end; if the client goes away first, abort them (their blocks are freed)."""
    results = [_Result(token_ids=[], logprobs=[]) for _ in streams]

    async def run() -> None:
        async for i, out in _merged(streams):
            results[i].add(out)

    task = asyncio.create_task(run())
    # the body has been read, so the next ASGI message is the client hanging up: waiting for it (rather than
    # polling is_disconnected) frees a gone client's blocks within an engine step
    gone = asyncio.create_task(_disconnect(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():  # the client is gone
            task.cancel()
        elif not task.cancelled():
            task.result()  # re-raises an engine failure
        return results
    finally:
        gone.cancel()
        for s in streams:
            s.close()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _sse(chunks: AsyncIterator[dict], streams: list[RequestStream]) -> StreamingResponse:
    async def body():
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # the client disconnected (or the stream ended): free the blocks now
            for s in streams:
                s.close()

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _completion_chunks(state, body, streams, prompt_of, rid, created) -> AsyncIterator[dict]:
    tok = state.engine.tokenizer

    def chunk(i, text, lp=None, finish=None):
        return {"id": rid, "object": "text_completion", "created": created, "model": state.model_name,
                "choices": [{"index": i, "text": text, "logprobs": lp, "finish_reason": finish}]}

    out_tokens = 0
    if body.echo:
        for i, (_, text) in enumerate(prompt_of):
            yield chunk(i, text)
    async for i, out in _merged(streams):
        out_tokens += len(out.token_ids)
        lp = None
        if body.logprobs is not None:
            ids = prompt_of[i][0] if body.echo and out.prompt_logprobs is not None else []
            lp = _completion_logprobs(tok, ids, out.prompt_logprobs if ids else None, out.token_ids, out.logprobs,
                                      body.logprobs)
        if out.text or out.finished or out.token_ids:
            yield chunk(i, out.text, lp, out.finish_reason if out.finished else None)
    if body.stream_options and body.stream_options.get("include_usage"):
        prompt_tokens = sum(len(prompt_of[i][0]) for i in range(0, len(prompt_of), body.n))
        yield {"id": rid, "object": "text_completion", "created": created, "model": state.model_name,
               "choices": [], "usage": _usage(prompt_tokens, out_tokens)}


async def _chat_chunks(state, body, streams, prompt_tokens, rid, created) -> AsyncIterator[dict]:
    tok = state.engine.tokenizer

    def chunk(i, delta, lp=None, finish=None):
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": state.model_name,
                "choices": [{"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}]}

    for i in range(len(streams)):
        yield chunk(i, {"role": "assistant", "content": ""})
    out_tokens = 0
    async for i, out in _merged(streams):
        out_tokens += len(out.token_ids)
        lp = _chat_logprobs(tok, out.token_ids, out.logprobs) if body.logprobs else None
        if out.text or out.finished or out.token_ids:
            yield chunk(i, {"content": out.text} if out.text else {}, lp, out.finish_reason if out.finished else None)
    if body.stream_options and body.stream_options.get("include_usage"):
        yield {"id": rid, "object": "chat.completion.chunk", "created": created, "model": state.model_name,
               "choices": [], "usage": _usage(prompt_tokens, out_tokens)}


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def _completion_logprobs(tokenizer, prompt_ids, prompt_lps, out_ids, out_lps, top_n) -> dict:
    """OpenAI's completions logprobs: tokens, token_logprobs, top_logprobs (top_n plus the chosen token),
    text_offset. With echo the prompt's tokens come first (the first one has no logprob)."""
    tokens, values, tops, offsets = [], [], [], []
    offset = 0
    pairs = list(zip(prompt_ids, prompt_lps or [None] * len(prompt_ids), strict=True)) + list(
        zip(out_ids, out_lps, strict=False))
    for token_id, lp in pairs:
        text = _token_text(tokenizer, token_id)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        if lp is None:
            values.append(None)
            tops.append(None)
            continue
        values.append(lp.logprob)
        top = {_token_text(tokenizer, t): v for t, v in lp.top[:top_n]}
        top.setdefault(text, lp.logprob)
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def _chat_logprobs(tokenizer, out_ids, out_lps) -> dict:
    content = []
    for token_id, lp in zip(out_ids, out_lps, strict=False):
        text = _token_text(tokenizer, token_id)
        content.append({"token": text, "logprob": lp.logprob, "bytes": list(text.encode()),
                        "top_logprobs": [{"token": _token_text(tokenizer, t), "logprob": v,
                                          "bytes": list(_token_text(tokenizer, t).encode())} for t, v in lp.top]})
    return {"content": content}
