"""The live service through real sockets: lifecycle, database, auth and validation, restarts, cancel, queue."""

from __future__ import annotations

import os
import time

import pytest

from flopwise.cluster.service.store import Store, database_url
from tests.cluster.service.conftest import ADMIN, A, Api, B, py


def states(job: dict) -> list[str]:
    return [t["to_state"] for t in job["transitions"]]


def test_command_job_runs_and_every_transition_is_stored(service, tmp_path):
    api = Api(service.url, A)
    job_id = api.submit(kind="command", argv=py("print('hello from the job')"), name="hello")
    job = api.wait(job_id, "succeeded")
    assert states(job) == ["queued", "admitted", "running", "succeeded"]
    assert all(t["at"] > 0 and t["reason"] for t in job["transitions"])
    assert [a["exit_code"] for a in job["allocations"]] == [0] and job["allocations"][0]["ended_at"] is not None
    assert "hello from the job" in api.get(f"/api/jobs/{job_id}/logs").json()["text"]
    metrics = api.get("/metrics").text  # Prometheus, no token needed
    assert 'flopwise_cluster_jobs{state="succeeded"} 1' in metrics and "flopwise_cluster_gpus_allocated{node=" in metrics
    assert api.get("/docs").status_code == 200 and "/api/jobs" in api.get("/openapi.json").text
    # the database is a SQLite file in WAL mode, and it holds the same history
    store = Store(database_url(None, tmp_path / "home"))
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert [t["to_state"] for t in store.transitions(job_id)] == states(job)
    store.close()


def test_metrics_report_a_running_training_jobs_throughput_and_the_machines_utilisation(service):
    api = Api(service.url, A)
    # a job that logs like the trainer (its out/metrics.jsonl: step records, a torn last line), then waits
    code = ("import json, pathlib, time; p = pathlib.Path('out/metrics.jsonl'); "
            "p.write_text(json.dumps({'step': 1, 'loss': 9.0, 'tokens_per_s': 100.0, 'mfu': 0.1}) + '\\n' + "
            "json.dumps({'step': 2, 'loss': 8.5, 'tokens_per_s': 1234.5, 'mfu': 0.42}) + '\\n{\"step\": 3, \"lo'); "
            "time.sleep(30)")
    job_id = api.submit(kind="command", argv=py(code), name="logger")
    api.wait(job_id, "running")
    labels = f'job="{job_id}",team="a"'
    deadline = time.time() + 30
    while True:  # the job writes its file once it has started
        metrics = api.get("/metrics").text
        if f"flopwise_cluster_job_mfu{{{labels}}}" in metrics or time.time() > deadline:
            break
        time.sleep(0.2)
    assert f"flopwise_cluster_job_tokens_per_s{{{labels}}} 1234.5" in metrics
    assert f"flopwise_cluster_job_mfu{{{labels}}} 0.42" in metrics
    cpu = [line for line in metrics.splitlines() if line.startswith("flopwise_cluster_node_cpu_utilisation ")]
    assert len(cpu) == 1 and 0.0 <= float(cpu[0].split()[1]) <= 1.0
    assert api.post(f"/api/jobs/{job_id}/cancel").status_code == 200
    api.wait(job_id, "cancelled")


def test_tokens_teams_and_validation(service):
    anon, a, b, admin = Api(service.url, None), Api(service.url, A), Api(service.url, B), Api(service.url, ADMIN)
    assert anon.get("/api/jobs").status_code == 401
    assert Api(service.url, "not-a-token").get("/api/jobs").status_code == 401
    job_id = a.submit(id="a-sleeper", kind="command", argv=py("import time; time.sleep(30)"))
    assert b.get(f"/api/jobs/{job_id}").status_code == 403
    assert b.post(f"/api/jobs/{job_id}/cancel").status_code == 403
    assert [j["id"] for j in b.get("/api/jobs").json()] == []
    assert [j["id"] for j in admin.get("/api/jobs").json()] == [job_id]
    # a job submitted twice with the same client id is one job; another job under that id is refused
    sleeper = {"id": "a-sleeper", "kind": "command", "argv": py("import time; time.sleep(30)")}
    again = a.post("/api/jobs", json={"job": sleeper})
    assert again.status_code == 200 and again.json()["created"] is False
    other = a.post("/api/jobs", json={"job": {"id": "a-sleeper", "kind": "command", "argv": py("print(2)")}})
    assert other.status_code == 409
    assert len(admin.get("/api/jobs").json()) == 1
    # every field validated, one clear message
    for job, words in [({"kind": "command"}, "argv"), ({"kind": "train", "gpus": "lots"}, "gpus"),
                       ({"kind": "command", "argv": ["x"], "priority": "high"}, "priority"),
                       ({"kind": "command", "argv": ["x"], "colour": 1}, "colour"),
                       ({"kind": "command", "argv": ["x"], "queue": "nope"}, "queue"),
                       ({"kind": "command", "argv": ["x"], "id": "../etc"}, "id"),
                       ({"kind": "serve"}, "kind")]:
        r = a.post("/api/jobs", json={"job": job})
        assert r.status_code == 400 and words in r.json()["detail"], (job, r.text)
    assert a.post("/api/jobs", json={"toml": "kind = "}).status_code == 400
    assert a.post("/api/jobs", data="not json").status_code == 400
    assert a.post(f"/api/jobs/{job_id}/cancel").json()["cancel_requested"] is True
    a.wait(job_id, "cancelled")


def test_failed_job_restarts_with_backoff_until_it_succeeds_or_gives_up(service):
    api = Api(service.url, A)
    flaky = api.submit(kind="command", max_restarts=3,
                       argv=py("import os, sys; sys.exit(0 if os.environ['FLOPWISE_JOB_ATTEMPT'] == '3' else 1)"))
    doomed = api.submit(kind="command", max_restarts=1, argv=py("import sys; sys.exit(7)"))
    job = api.wait(flaky, "succeeded")
    assert job["attempts"] == 3 and [a["exit_code"] for a in job["allocations"]] == [1, 1, 0]
    requeues = [t for t in job["transitions"] if t["from_state"] == "running" and t["to_state"] == "queued"]
    assert len(requeues) == 2 and "restart 1 of 3" in requeues[0]["reason"]
    assert requeues[1]["at"] - requeues[0]["at"] > 0.3  # the backoff doubles
    job = api.wait(doomed, "failed")
    assert job["attempts"] == 2 and "gave up after 1 restarts" in job["reason"] and "exit 7" in job["reason"]


def test_cancel_stops_a_running_job_and_a_queued_one(service):
    api = Api(service.url, A)
    running = api.submit(kind="command", gpus=2, argv=py("import time; time.sleep(60)"))
    api.wait(running, "running")
    waiting = api.submit(kind="command", gpus=2, argv=py("print(1)"))
    queue = api.get("/api/queue").json()
    assert [(q["id"], q["position"]) for q in queue] == [(waiting, 1)]
    assert queue[0]["estimated_wait_s"] > 3500  # after the running job's default run time, 1 h
    pid = api.get(f"/api/jobs/{running}").json()["allocations"][0]["pid"]
    api.post(f"/api/jobs/{waiting}/cancel")
    api.post(f"/api/jobs/{running}/cancel")
    assert states(api.wait(waiting, "cancelled")) == ["queued", "cancelled"]
    api.wait(running, "cancelled")
    deadline = time.time() + 20
    while time.time() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid)


def test_queue_estimates_follow_durations_and_usage_counts_idle_slots(service):
    api = Api(service.url, A)
    idle = api.submit(kind="command", gpus=1, duration_s=100, argv=py("import time; time.sleep(60)"))
    spin = "import time\nt=time.time()\nwhile time.time()-t<60: pass"
    busy = api.submit(kind="command", gpus=1, duration_s=100, argv=py(spin))
    api.wait(idle, "running")
    api.wait(busy, "running")
    later = [api.submit(kind="command", gpus=2, duration_s=50, argv=py("print(1)")) for _ in range(2)]
    queue = {q["id"]: q for q in api.get("/api/queue").json()}
    first, second = queue[later[0]], queue[later[1]]
    assert (first["position"], second["position"]) == (1, 2)
    assert first["estimated_wait_s"] == pytest.approx(100, abs=15)  # both running jobs end at ~100 s
    assert second["estimated_start"] - first["estimated_start"] == pytest.approx(50, abs=1)
    time.sleep(2.5)
    usage = {u["team"]: u for u in api.get("/api/usage").json()}
    assert usage["a"]["allocated_gpu_h"] * 3600 > 3.0  # two slots for > 1.5 s
    assert usage["a"]["used_gpu_h"] > 0 and usage["a"]["idle_fraction"] >= 0.45  # one slot computes, one sleeps
    nodes = api.get("/api/nodes").json()
    assert nodes[0]["allocated"] == 2 and nodes[0]["flavor"] == "cpu"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
