"""`flopwise serve` as a user runs it (a process answering curl and the openai client), bad input, and the
Ray Serve deployment on a local Ray: autoscaling configured, a killed replica replaced."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import requests

from tests.ports import free_port

openai = pytest.importorskip("openai")


def wait_healthy(url: str, seconds: float, proc=None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{url} not healthy after {seconds} s")


def descendants(pid: int) -> list[int]:
    """The live processes below pid (Linux /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(entry)] = int(fields[1])
    found, todo = [], [pid]
    while todo:
        pid = todo.pop()
        kids = [c for c, parent in parents.items() if parent == pid]
        found += kids
        todo += kids
    return found


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [p for p in pids if os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1]
                 .split()[0] != "Z"]
        if not alive:
            return []
        time.sleep(0.1)
    return alive


def start_serve(checkpoint, port: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flopwise.cli", "serve", "--checkpoint", str(checkpoint),
                             "--port", str(port), "--threads", "1", "--served-model-name", "toy", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def run_cli(*args) -> int:
    from flopwise.cli import main

    try:
        main(list(args))
    except SystemExit as exc:
        return exc.code
    return 0


def test_serve_bad_input_is_one_line_and_exit_2(capsys, lfa_checkpoint):
    assert run_cli("serve", "--checkpoint", "/nonexistent") == 2
    assert "does not exist" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert run_cli("serve", "--checkpoint", str(lfa_checkpoint), "--port", str(busy.getsockname()[1])) == 2
    assert "cannot listen" in capsys.readouterr().err
    assert run_cli("serve", "--checkpoint", str(lfa_checkpoint), "--block-size", "0") == 2
    assert "serve.block_size = 0" in capsys.readouterr().err


def test_generate_checks_the_prompt_before_printing_it_and_says_when_the_context_caps_it(capsys, lfa_checkpoint):
    assert run_cli("generate", "x " * 400, "--checkpoint", str(lfa_checkpoint), "-n", "5") == 2
    out, err = capsys.readouterr()
    assert "longer than the model context" in err and "x x" not in out  # nothing printed for a refused prompt
    assert run_cli("generate", "def ", "--checkpoint", str(lfa_checkpoint), "-n", str(10**6), "--seed", "1") == 0
    out, err = capsys.readouterr()
    assert out.startswith("def ") and "--max-tokens 1000000 is past the model's context" in err


def test_a_checkpoint_read_for_its_weights_checks_its_tokenizer_and_its_job(capsys, lfa_checkpoint, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(lfa_checkpoint, run)
    step = next((run / "checkpoints").glob("step_*"))
    tokenizer = step / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"hello"', '"hellp"', 1) + " ")
    assert run_cli("generate", "hi", "--checkpoint", str(step)) == 2
    assert "tokenizer.json" in capsys.readouterr().err
    shutil.copy(lfa_checkpoint / "checkpoints" / step.name / "tokenizer.json", tokenizer)
    config = json.loads((step / "config.json").read_text())
    del config["job"]
    (step / "config.json").write_text(json.dumps(config))
    assert run_cli("generate", "hi", "--checkpoint", str(step)) == 2
    assert "config.json lacks 'job'" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_command_answers_curl_and_the_openai_client(lfa_checkpoint):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_serve(lfa_checkpoint, port, "--engine-process")
    try:
        wait_healthy(url, 120, proc)
        children = descendants(proc.pid)
        assert children  # the engine runs in a process of its own
        if shutil.which("curl"):
            # greedy: at the default temperature 1 the random model samples its end-of-document token first
            # with probability 0.16% (measured), which ends the answer with no tokens; CI drew it once
            body = {"model": "toy", "prompt": "def ", "max_tokens": 5, "temperature": 0}
            out = subprocess.run(["curl", "-s", url + "/v1/completions", "-H", "Content-Type: application/json",
                                  "-d", json.dumps(body)],
                                 capture_output=True, text=True, timeout=60)
            assert json.loads(out.stdout)["usage"]["completion_tokens"] >= 1
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        chat = client.chat.completions.create(model="toy", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        assert chat.choices[0].message.role == "assistant"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode in (0, -15)
    assert not wait_gone(children, 10)  # SIGTERM stopped the engine process too


@pytest.mark.slow
def test_engine_process_exits_when_the_server_is_killed(lfa_checkpoint):
    port = free_port()
    proc = start_serve(lfa_checkpoint, port, "--engine-process")
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 120, proc)
        children = descendants(proc.pid)
        assert children
    finally:
        proc.kill()  # SIGKILL: no shutdown code runs in the server
        proc.wait(timeout=30)
    assert not wait_gone(children, 30)  # the engine saw its request pipe close


@pytest.fixture(scope="module")
def ray_deployment(lfa_checkpoint):
    pytest.importorskip("ray.serve")
    import ray
    from ray import serve

    from flopwise.serve.config import EngineConfig
    from flopwise.serve.ray_serve import RayServeOptions, deploy

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        options = RayServeOptions(min_replicas=1, max_replicas=2, target_ongoing_requests=2, replica_cpus=0.5)
        url = deploy(lfa_checkpoint, EngineConfig(block_size=8, device="cpu", threads=1), options, port=port,
                     model_name="toy")
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.slow
def test_ray_serve_deployment_autoscales_and_replaces_a_crashed_replica(ray_deployment):
    import ray
    from ray import serve

    from flopwise.serve.ray_serve import replica_actor_names

    client = openai.OpenAI(base_url=ray_deployment + "/v1", api_key="none", max_retries=0, timeout=60)
    first = client.completions.create(model="toy", prompt="def ", max_tokens=6, temperature=0)
    assert first.usage.completion_tokens >= 1
    status = serve.status().applications["flopwise"].deployments["FlopwiseReplica"]
    assert status.status == "HEALTHY"

    before = replica_actor_names()
    assert len(before) >= 1
    ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        names = replica_actor_names()
        if names and before[0] not in names:
            try:
                again = client.completions.create(model="toy", prompt="def ", max_tokens=6, temperature=0)
                break
            except openai.APIError:
                pass
        time.sleep(0.5)
    else:
        raise AssertionError("the killed replica was not replaced within 120 s")
    assert again.choices[0].text == first.choices[0].text  # the replacement serves the same model
