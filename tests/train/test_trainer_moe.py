"""A mixture-of-experts model through the single-process trainer: losses, auxiliary-loss logging, MFU from
active FLOPs, checkpoint and resume of the stacked expert weights."""

import json
import shutil

import pytest

from flopwise.flops import model_flops_per_token
from flopwise.train.config import load_config
from flopwise.train.trainer import train

# nano-moe with tiny-moe's 8 experts (top-2): the router's balance range of the demo MoE on a model a few
# times cheaper to train; lr 1e-2 so 6 steps move the loss by more than 0.5
ARGS = ["train.global_batch=4", "train.micro_batch=2", "train.seq_len=32", "train.lr=1e-2", "train.warmup_steps=2",
        "train.log_every=1", "train.eval_every=0", "train.eval_batches=1", "model.z_loss_coef=0.001",
        "model.experts=8"]


def _steps(metrics):
    """The per-step records of a metrics.jsonl (the run also ends with a `plan_vs_measured` event)."""
    return [r for r in map(json.loads, metrics.read_text().splitlines()) if "event" not in r]


def _job(shards, out, *extra):
    return load_config(None, [f'data.shards="{shards}"', *ARGS, *extra], preset="nano-moe", out=str(out))


@pytest.mark.slow
def test_moe_trains_logs_auxiliary_losses_and_resumes(nano_shards, tmp_path):
    events = []
    job = _job(nano_shards, tmp_path / "full", "train.steps=6", "checkpoint.every=3")
    assert job.model_config().experts == 8
    train(job, on_event=events.append)
    records = _steps(tmp_path / "full" / "metrics.jsonl")
    assert records[-1]["loss"] < records[0]["loss"] - 0.5
    for r in records:
        assert 0.9 < r["moe_balance_loss"] < job.model_config().experts / 2 and r["moe_z_loss"] > 0
        assert r["moe_dropped"] == 0.0 and r["moe_max_load"] >= 1.0
    # MFU uses the active FLOPs of flops.py (the dense formula would count all 8 experts)
    peak = next(e for e in events if e["event"] == "start")["peak_flops"]
    flops = model_flops_per_token(job.model_config(), 32)
    assert records[-1]["mfu"] == pytest.approx(records[-1]["tokens_per_s"] * flops / peak, rel=1e-3, abs=1e-6)

    # resume from the step-3 checkpoint (the later one removed): steps 4-6 repeat exactly
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_00000006")
    train(_job(nano_shards, tmp_path / "cut", "train.steps=6", "checkpoint.every=3"), resume=True)
    resumed = _steps(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 7))
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in records], rel=1e-5)
    assert [r["moe_balance_loss"] for r in resumed] == pytest.approx([r["moe_balance_loss"] for r in records], rel=1e-4)
