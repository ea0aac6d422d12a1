"""A mixture-of-experts model through the single-process trainer: losses, auxiliary-loss logging, MFU from
active FLOPs, checkpoint and resume of the stacked expert weights."""

import json
import shutil

import pytest

from flopwise.flops import model_flops_per_token
from flopwise.models import get_preset
from flopwise.train.config import load_config
from flopwise.train.trainer import train

ARGS = ["train.global_batch=4", "train.micro_batch=2", "train.seq_len=32", "train.lr=3e-3", "train.warmup_steps=2",
        "train.log_every=1", "train.eval_every=0", "train.eval_batches=1", "model.z_loss_coef=0.001"]


def _job(shards, out, *extra):
    return load_config(None, [f'data.shards="{shards}"', *ARGS, *extra], preset="tiny-moe", out=str(out))


@pytest.mark.slow
def test_tiny_moe_trains_logs_auxiliary_losses_and_resumes(nano_shards, tmp_path):
    events = []
    train(_job(nano_shards, tmp_path / "full", "train.steps=6", "checkpoint.every=3"), on_event=events.append)
    lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "loss" in r]  # step records (not plan_vs_measured)
    assert records[-1]["loss"] < records[0]["loss"] - 0.5
    for r in records:
        assert 0.9 < r["moe_balance_loss"] < get_preset("tiny-moe").experts / 2 and r["moe_z_loss"] > 0
        assert r["moe_dropped"] == 0.0 and r["moe_max_load"] >= 1.0
    # MFU uses the active FLOPs of flops.py (the dense formula would count all 8 experts)
    peak = next(e for e in events if e["event"] == "start")["peak_flops"]
    flops = model_flops_per_token(get_preset("tiny-moe"), 32)
    assert records[-1]["mfu"] == pytest.approx(records[-1]["tokens_per_s"] * flops / peak, rel=1e-3, abs=1e-6)

    # resume from the step-3 checkpoint (the later one removed): steps 4-6 repeat exactly
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_00000006")
    train(_job(nano_shards, tmp_path / "cut", "train.steps=6", "checkpoint.every=3"), resume=True)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    resumed = [r for r in map(json.loads, lines) if "loss" in r]
    assert [r["step"] for r in resumed] == list(range(1, 7))
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in records], rel=1e-5)
    assert [r["moe_balance_loss"] for r in resumed] == pytest.approx([r["moe_balance_loss"] for r in records], rel=1e-4)
