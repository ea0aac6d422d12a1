"""The same service with its state in PostgreSQL (a throw-away server; skipped with the reason without one)."""

from __future__ import annotations

import pytest

from flopwise.cluster.service.store import Store, database_url
from tests.cluster.service.conftest import A, Api, py, start_service
from tests.cluster.service.postgres import start_postgres


@pytest.fixture
def postgres(tmp_path):
    url, stop = start_postgres(tmp_path / "pg")
    yield url
    stop()


def test_service_keeps_its_state_in_postgresql(postgres, tmp_path):
    running = start_service(tmp_path / "home", db=postgres)
    try:
        api = Api(running.url, A)
        done = api.submit(id="pg-job", kind="command", argv=py("print('stored in postgres')"))
        assert [t["to_state"] for t in api.wait(done, "succeeded")["transitions"]] == [
            "queued", "admitted", "running", "succeeded"]
        waiting = api.submit(id="pg-waiting", kind="command", gpus=3, argv=py("print(1)"))  # more than 2 slots
        assert "rejected" in api.wait(waiting, "failed")["reason"]
    finally:
        running.stop()
    store = Store(database_url(postgres, tmp_path))
    assert store.engine.dialect.name == "postgresql"
    assert {j["id"]: j["state"] for j in store.jobs()} == {"pg-job": "succeeded", "pg-waiting": "failed"}
    assert store.load_state()["jobs"]  # the scheduler core's state is there too
    store.close()
    again = start_service(tmp_path / "home", db=postgres)  # a restart reads it all back
    try:
        assert {j["id"] for j in Api(again.url, A).get("/api/jobs").json()} == {"pg-job", "pg-waiting"}
    finally:
        again.stop()
