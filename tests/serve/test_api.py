"""The HTTP API through real clients: the `openai` package and plain HTTP (requests)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from tests.serve.conftest import SERVER_CONFIG

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def stats(server) -> dict:
    return server.app.state.flopwise.engine.stats()


def test_completion_streamed_equals_non_streamed(client):
    kw = {"model": "toy", "prompt": "def parse(line):\n    ", "max_tokens": 24, "temperature": 0}
    whole = client.completions.create(**kw)
    assert whole.object == "text_completion" and whole.usage.completion_tokens > 0
    pieces = [c.choices[0].text for c in client.completions.create(stream=True, **kw)]
    assert len(pieces) > 2 and "".join(pieces) == whole.choices[0].text
    # seeded sampling is reproducible, and so is its stream
    hot = {**kw, "temperature": 1.0, "top_p": 0.9, "seed": 11}
    first = client.completions.create(**hot).choices[0].text
    assert client.completions.create(**hot).choices[0].text == first
    assert "".join(c.choices[0].text for c in client.completions.create(stream=True, **hot)) == first


def test_chat_completion_and_stream(client):
    messages = [{"role": "system", "content": "Answer in code."}, {"role": "user", "content": "Sort a list."}]
    whole = client.chat.completions.create(model="toy", messages=messages, max_tokens=20, temperature=0)
    msg = whole.choices[0].message
    assert msg.role == "assistant" and whole.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(model="toy", messages=messages, max_tokens=20, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == msg.content
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_several_prompts_and_n(client):
    out = client.completions.create(model="toy", prompt=["import os", "class A:"], max_tokens=5, temperature=0.8,
                                     n=2, seed=3)
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]
    single = client.completions.create(model="toy", prompt="class A:", max_tokens=5, temperature=0.8, seed=3)
    assert out.choices[2].text == single.choices[0].text  # prompt 1, first sample: same seed, same text


def test_echo_with_logprobs(client, server):
    prompt = "for i in range(10):"
    out = client.completions.create(model="toy", prompt=prompt, max_tokens=3, temperature=0, echo=True, logprobs=2)
    choice = out.choices[0]
    lp = choice.logprobs
    n_prompt = requests.post(server.url + "/tokenize", json={"prompt": prompt}).json()["count"]
    assert choice.text.startswith(prompt)
    assert len(lp.tokens) == n_prompt + 3 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert "".join(lp.tokens) == choice.text
    for value, top in zip(lp.token_logprobs[n_prompt:], lp.top_logprobs[n_prompt:], strict=True):
        assert value == max(top.values())  # greedy picks the most likely token


def test_tokenizer_endpoints_health_models_metrics(server, client):
    ids = requests.post(server.url + "/tokenize", json={"prompt": "hello world"}).json()["tokens"]
    assert requests.post(server.url + "/detokenize", json={"tokens": ids}).json()["prompt"] == "hello world"
    info = requests.get(server.url + "/tokenizer_info").json()
    assert info["eos_token"] == "<|endoftext|>" and info["max_model_len"] == 192
    assert requests.get(server.url + "/health").status_code == 200
    assert [m.id for m in client.models.list().data] == ["toy"]
    client.completions.create(model="toy", prompt="x = ", max_tokens=3)
    text = requests.get(server.url + "/metrics").text
    for name in ("flopwise_time_to_first_token_seconds_count", "flopwise_time_per_output_token_seconds_bucket",
                 "flopwise_num_requests_running", "flopwise_num_requests_waiting", "flopwise_kv_cache_usage_perc"):
        assert name in text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x " * 300, "max_tokens": 4}, "prompt"),  # longer than the 192-token context
        ({"prompt": "x", "max_tokens": 4, "temperature": -1}, "temperature"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "top_p": 2}, "top_p"),
        ({"prompt": "x", "logprobs": 50}, "logprobs"),
        ({"max_tokens": 4}, "prompt"),  # missing
        ({"prompt": "x", "max_tokens": "many"}, "max_tokens"),
    ],
)
def test_bad_requests_get_400_in_openai_shape(server, body, param):
    r = requests.post(server.url + "/v1/completions", json={"model": "toy", **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


def test_openai_client_sees_the_errors(client):
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model="toy", prompt="x " * 300, max_tokens=4)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=4)


@pytest.mark.parametrize("engine_process", [True, False], ids=["engine-process", "engine-thread"])
def test_api_key_401_and_queue_full_429(lfa_checkpoint, engine_process):
    from flopwise.serve.config import EngineConfig
    from flopwise.serve.server import BackgroundServer, create_app

    config = EngineConfig(block_size=8, max_num_seqs=1, max_waiting=1, device="cpu", threads=1)
    app = create_app(lfa_checkpoint, config, api_key="s3cret", model_name="toy", engine_process=engine_process)
    with BackgroundServer(app) as srv:
        r = requests.post(srv.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert requests.get(srv.url + "/health").status_code == 200  # health and metrics stay open
        keyed = openai.OpenAI(base_url=srv.url + "/v1", api_key="s3cret", max_retries=0)
        assert keyed.completions.create(model="toy", prompt="x", max_tokens=2).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()

        codes, lock = [], threading.Lock()

        def send():
            r = requests.post(srv.url + "/v1/completions", headers={"Authorization": "Bearer s3cret"},
                              json={"prompt": "x", "max_tokens": 150, "ignore_eos": True}, timeout=120)
            with lock:
                codes.append((r.status_code, r.json()))

        threads = [threading.Thread(target=send) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        busy = [body for code, body in codes if code == 429]
        assert busy and busy[0]["error"]["type"] == "rate_limit_error"  # one runs, one waits, the rest: 429
        assert sum(code == 200 for code, _ in codes) >= 1


def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not condition():
        time.sleep(0.01)
    return condition()


def test_client_disconnect_mid_stream_frees_blocks(server):
    body = {"model": "toy", "prompt": "def f():", "max_tokens": 170, "ignore_eos": True, "stream": True}
    with requests.post(server.url + "/v1/completions", json=body, stream=True, timeout=60) as r:
        lines = r.iter_lines()
        got = [json.loads(line[6:]) for line, _ in zip((x for x in lines if x), range(3), strict=False)]
        assert got and stats(server)["running"] == 1 and stats(server)["kv_cache_usage"] > 0
    # closed: the request must be gone long before it could finish
    assert wait_for(lambda: not (stats(server)["running"] or stats(server)["kv_cache_usage"]))


def test_client_disconnect_without_streaming_frees_blocks(server):
    """A client that hangs up on a non-streaming request aborts it: its blocks are freed before it could have finished.
    Timed by the engine's own steps, not the clock: 8 prompts of 170 tokens need at least 170 decode steps to finish,
    and the client hangs up as soon as the engine runs them (a fast machine once finished a single prompt before a
    fixed client timeout, which made the old version of this test flaky)."""
    import socket
    from urllib.parse import urlsplit

    assert wait_for(lambda: not (stats(server)["running"] or stats(server)["waiting"]))  # earlier tests' requests
    body = json.dumps({"model": "toy", "prompt": ["def f():"] * 8, "max_tokens": 170, "ignore_eos": True}).encode()
    url = urlsplit(server.url)
    before = stats(server)["steps"]
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (url.netloc.encode(), len(body), body))
        assert wait_for(lambda: stats(server)["running"] > 0)
    # the client is gone: the server hears the disconnect and aborts all 8 (within a few steps; 60-75 when it polled
    # every 0.2 s, which a machine twice as fast could have let run to the end)
    assert wait_for(lambda: not (stats(server)["running"] or stats(server)["kv_cache_usage"]))
    assert stats(server)["steps"] - before < 170  # freed by the abort, not by finishing


def test_stop_string_ends_the_text(client):
    kw = {"model": "toy", "prompt": "def parse(line):\n    ", "max_tokens": 40, "temperature": 0,
          "extra_body": {"ignore_eos": True}}
    whole = client.completions.create(**kw).choices[0].text
    stop = whole[len(whole) // 2 : len(whole) // 2 + 3]
    assert stop and whole.find(stop) > 0
    cut = client.completions.create(stop=[stop], **kw).choices[0]
    assert cut.text == whole[: whole.find(stop)] and cut.finish_reason == "stop"
    streamed = list(client.completions.create(stop=[stop], stream=True, **kw))
    assert "".join(c.choices[0].text for c in streamed) == cut.text
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_engine_process_death_gives_503_and_shutdown_leaves_no_process(lfa_checkpoint):
    import os
    import signal

    from flopwise.serve.server import BackgroundServer, create_app

    with BackgroundServer(create_app(lfa_checkpoint, SERVER_CONFIG, model_name="toy", engine_process=True)) as srv:
        engine = srv.app.state.flopwise.engine
        body = {"model": "toy", "prompt": "def f():", "max_tokens": 170, "ignore_eos": True, "stream": True}
        with requests.post(srv.url + "/v1/completions", json=body, stream=True, timeout=30) as r:
            lines = (x for x in r.iter_lines() if x)
            assert next(lines).startswith(b"data: ")
            os.kill(engine.pid, signal.SIGKILL)
            try:  # the stream ends (cut off) rather than hanging: a hang raises ReadTimeout
                rest = list(lines)
            except requests.exceptions.ChunkedEncodingError:
                rest = []
            assert b"data: [DONE]" not in rest
        assert requests.get(srv.url + "/health").status_code == 503
        r = requests.post(srv.url + "/v1/completions", json={"model": "toy", "prompt": "x", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    assert not engine.process.is_alive()

    with BackgroundServer(create_app(lfa_checkpoint, SERVER_CONFIG, model_name="toy", engine_process=True)) as srv:
        engine = srv.app.state.flopwise.engine
        assert requests.post(srv.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200
    assert not engine.process.is_alive() and engine.process.exitcode == 0  # stopped, not killed
