"""A live service on 127.0.0.1 (a free port) over a temporary home: 2 CPU slots, teams a and b, fast ticks."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import requests

pytest.importorskip("sqlalchemy", reason="the cluster extra (sqlalchemy) is not installed")

from flopwise.cluster.service.daemon import ServiceOptions, local_cluster  # noqa: E402
from flopwise.cluster.service.server import start  # noqa: E402

TOKENS = 'admin = "admin-token-123"\n[teams]\na = "team-a-token-123"\nb = "team-b-token-123"\n'
A, B, ADMIN = "team-a-token-123", "team-b-token-123", "admin-token-123"
FAST = ServiceOptions(policy="priority", tick_s=0.1, grace_s=20.0, backoff_base_s=0.3, usage_every_s=0.2)


def write_tokens(path: Path) -> Path:
    path.write_text(TOKENS)
    return path


def start_service(home: Path, slots: int = 2, options: ServiceOptions = FAST, **kw):
    tokens = write_tokens(home.parent / f"{home.name}-tokens.toml")
    return start(home, port=0, cluster=local_cluster(gpus=0, slots=slots), options=options, tokens=tokens, **kw)


@pytest.fixture
def service(tmp_path):
    running = start_service(tmp_path / "home")
    yield running
    running.stop(kill_jobs=True)


class Api:
    def __init__(self, url: str, token: str | None) -> None:
        self.url, self.s = url, requests.Session()
        if token:
            self.s.headers["Authorization"] = f"Bearer {token}"

    def get(self, path, **kw):
        return self.s.get(self.url + path, timeout=30, **kw)

    def post(self, path, **kw):
        return self.s.post(self.url + path, timeout=30, **kw)

    def submit(self, **job) -> str:
        r = self.post("/api/jobs", json={"job": job})
        assert r.status_code in (200, 201), r.text
        return r.json()["id"]

    def wait(self, job_id: str, states, timeout: float = 60.0) -> dict:
        states = {states} if isinstance(states, str) else set(states)
        deadline = time.time() + timeout
        while time.time() < deadline:
            job = self.get(f"/api/jobs/{job_id}").json()
            if job["state"] in states:
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} still {job['state']} ({job['reason']}) after {timeout} s, not {states}")


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]
