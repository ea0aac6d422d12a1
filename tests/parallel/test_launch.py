"""`flopwise train --nproc N` through torchrun: a working run, and a dead rank that ends the job."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _args(shards, out, steps):
    sets = [f'data.shards="{shards}"', "train.global_batch=8", "train.micro_batch=2", "train.log_every=1",
            "checkpoint.every=0", "parallel.timeout_s=60"]
    return ["train", "--preset", "nano", "--steps", str(steps), "--out", str(out), "--quiet",
            *sum((["--set", s] for s in sets), [])]


def _cli(args):
    return subprocess.Popen([sys.executable, "-m", "flopwise.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_nproc_launch_trains_and_prints_the_pipeline_split(nano_shards, tmp_path):
    proc = _cli(_args(nano_shards, tmp_path / "run", 3) + ["--nproc", "2", "--pp", "2"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "pipeline split" in out and "pp2" in out
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]


def _rank_pids(rank: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"flopwise.cli" in cmd and b"TORCHELASTIC_RUN_ID" in b"".join(
                e[:20] for e in environ):
            pids.append(int(entry.name))
    return pids


def test_a_dead_rank_ends_the_job_with_an_error_not_a_hang(nano_shards, tmp_path):
    out = tmp_path / "run"
    proc = _cli(_args(nano_shards, out, 100_000) + ["--nproc", "2", "--dp", "2"])
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    victims = _rank_pids(1)
    assert victims, "rank 1 not found"
    start = time.time()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "distributed job failed" in err
    assert time.time() - start < 90
