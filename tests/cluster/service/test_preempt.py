"""Preemption through the service: SIGTERM, the trainer saves and exits 143, the job requeues, resumes with
--resume, and ends with the loss curve of an uninterrupted run."""

from __future__ import annotations

import json
import time

import pytest

from flopwise.train.config import load_config
from flopwise.train.trainer import train
from tests.cluster.service.conftest import A, Api, py, start_service

STEPS = 40  # enough steps left after the third metrics line that SIGTERM lands mid-run on a fast machine
NANO = ["train.global_batch=8", "train.micro_batch=4", "train.lr=3e-3", "train.warmup_steps=3", "train.log_every=1",
        "train.eval_every=0"]


def _losses(path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines()) if "loss" in r}


@pytest.mark.slow
def test_preempted_training_resumes_with_the_same_loss_curve(nano_shards, tmp_path):
    sets = [f'data.shards="{nano_shards}"', *NANO]
    reference = tmp_path / "reference"
    train(load_config(None, sets, preset="nano", out=str(reference), **{"train.steps": STEPS}))
    running = start_service(tmp_path / "home", slots=1)
    try:
        api = Api(running.url, A)
        args = ["--preset", "nano", "--steps", str(STEPS), *sum((["--set", s] for s in sets), [])]
        low = api.submit(id="low", kind="train", priority=0, args=args)
        metrics = running.service.executor.job_dir(low) / "out" / "metrics.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
            time.sleep(0.05)
        high = api.submit(id="high", kind="command", priority=10, argv=py("print('urgent')"))
        job = api.wait(low, "preempted", timeout=30)
        assert "preempted for high" in job["reason"]
        api.wait(high, "succeeded", timeout=60)
        job = api.wait(low, "succeeded", timeout=180)
    finally:
        running.stop(kill_jobs=True)
    seen = [t["to_state"] for t in job["transitions"]]
    assert seen == ["queued", "admitted", "running", "preempted", "admitted", "running", "succeeded"]
    assert [a["exit_code"] for a in job["allocations"]] == [143, 0] and job["attempts"] == 2
    log = (running.service.executor.job_dir(low) / "log.txt").read_text()
    assert "preempted (SIGTERM): checkpoint at step" in log and "resuming from" in log
    stopped_at = int(log.split("checkpoint at step ")[1].split()[0])
    assert 0 < stopped_at < STEPS, "the run ended before it could be preempted"
    after, before = _losses(metrics), _losses(reference / "metrics.jsonl")
    assert sorted(after) == list(range(1, STEPS + 1))
    assert [after[s] for s in sorted(after)] == pytest.approx([before[s] for s in sorted(before)], rel=1e-5)
