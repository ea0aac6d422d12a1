"""kill -9 the service while jobs run, start it again: no job lost or run twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.cluster.service.conftest import A, Api, py, write_tokens
from tests.ports import free_port


def _up(home, tokens, port):
    cmd = [sys.executable, "-m", "flopwise.cli", "cluster", "up", "--home", str(home), "--port", str(port),
           "--tokens", str(tokens), "--slots", "2", "--backoff", "0.5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read())
        try:
            if Api(url, A).get("/api/whoami").status_code == 200:
                return proc, url
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the service did not come up")


@pytest.mark.slow
def test_killed_service_restarts_adopts_running_jobs_and_restarts_lost_ones(tmp_path):
    home, port = tmp_path / "home", free_port()
    tokens = write_tokens(tmp_path / "tokens.toml")
    proc, url = _up(home, tokens, port)
    try:
        api = Api(url, A)
        adopted = api.submit(id="survivor", kind="command", argv=py("import time; time.sleep(4); print('survived')"))
        lost = api.submit(id="victim", kind="command", max_restarts=2,
                          argv=py("import os, time; time.sleep(60 if os.environ['FLOPWISE_JOB_ATTEMPT'] == '1' else 0)"))
        api.wait(adopted, "running")
        victim_pid = api.wait(lost, "running")["allocations"][0]["pid"]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        os.killpg(victim_pid, signal.SIGKILL)  # this job's processes die while the service is down
        time.sleep(0.5)
        proc, url = _up(home, tokens, port)
        api = Api(url, A)
        job = api.wait(adopted, "succeeded", timeout=30)
        assert job["attempts"] == 1 and len(job["allocations"]) == 1  # adopted, not started twice
        assert "survived" in api.get(f"/api/jobs/{adopted}/logs").json()["text"]
        job = api.wait(lost, "succeeded", timeout=30)
        assert job["attempts"] == 2 and any("process lost" in t["reason"] for t in job["transitions"])
        assert sorted(j["id"] for j in api.get("/api/jobs").json()) == ["survivor", "victim"]
        assert json.loads((home / "endpoint.json").read_text())["url"] == url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
