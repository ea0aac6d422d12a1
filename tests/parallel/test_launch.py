"""`flopwise train --nproc N` through torchrun: a working run, and a dead rank that ends the job."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_run import run_cli

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _args(shards, out, steps):
    sets = [f'data.shards="{shards}"', "train.global_batch=8", "train.micro_batch=2", "train.log_every=1",
            "checkpoint.every=0", "parallel.timeout_s=60"]
    return ["train", "--preset", "nano", "--steps", str(steps), "--out", str(out), "--quiet",
            *sum((["--set", s] for s in sets), [])]


def _cli(args):
    return subprocess.Popen([sys.executable, "-m", "flopwise.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_planned_job_config_runs_as_is_and_prints_the_planners_split(nano_shards, tmp_path, capsys):
    """`flopwise plan --write-config` -> `flopwise train --config --nproc`: the run's pipeline table is the
    planner's, number for number, and the run ends with the planner's prediction beside the measurement."""
    from flopwise.cli.train import PIPELINE_COLUMNS
    from flopwise.hardware import cpu_accelerator
    from flopwise.plan.cost import CostModel
    from flopwise.plan.spec import Cluster, Training
    from flopwise.train.config import load_config, resolve_layout

    config = tmp_path / "job.toml"
    code, _, err = run_cli(capsys, "plan", "--preset", "nano", "--gpu", "cpu", "--gpus", "2", "--gpus-per-node", "2",
                           "--global-batch", "8", "--precision", "fp32", "--layout", "pp=2,mb=2",
                           "--write-config", config)
    assert code == 0, err
    proc = _cli(["train", "--config", str(config), "--nproc", "2", "--steps", "3", "--out", str(tmp_path / "run"),
                 "--set", f'data.shards="{nano_shards}"', "--set", "train.log_every=1"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    job = load_config(config)
    layout, microbatches = resolve_layout(job, 2)
    assert "pipeline split " + ",".join(map(str, layout.split)) in out and "pp2" in out
    cm = CostModel(job.model_config(), Cluster(cpu_accelerator(), 2, 2), Training(8, precision="fp32"))
    for rank, layers in enumerate(layout.split):
        expected = cm.stage_memory(layout, rank, layers, microbatches)
        cells = [f"{sum(expected[k] for k in parts) / 1e9:.3g}" for parts in PIPELINE_COLUMNS.values()]
        row = " ".join([str(rank), str(layers), str(2 - rank), *cells])
        assert row in " ".join(out.replace("│", " ").split()), row
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    versus = records[-1]
    assert versus["event"] == "plan_vs_measured" and versus["inputs"]["layout"] == layout.to_dict()
    assert versus["predicted_step_s"] > 0 and versus["measured_step_s"] > 0 and versus["measured_memory_bytes"] > 0
    assert "step time: planner / measured" in out


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
