import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flopwise.errors import CheckpointError, ConfigError, FlopwiseError
from flopwise.models import Transformer
from flopwise.train import trainer as trainer_mod
from flopwise.train.checkpoint import export_safetensors, latest_checkpoint, step_dirs
from flopwise.train.config import load_config
from flopwise.train.engine import Engine
from flopwise.train.trainer import train

NANO = ["train.global_batch=8", "train.micro_batch=4", "train.lr=3e-3", "train.warmup_steps=3", "train.log_every=1",
        "train.eval_every=5", "train.eval_batches=2"]


def _job(shards, out, *extra):
    return load_config(None, [f'data.shards="{shards}"', *NANO, *extra], preset="nano", out=str(out))


def _losses(metrics: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r}


def test_training_lowers_loss_and_logs_every_field(nano_shards, tmp_path):
    events = []
    result = train(_job(nano_shards, tmp_path / "run", "train.steps=20", "checkpoint.every=10"), on_event=events.append)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 21))
    for key in ("step", "loss", "lr", "tokens_per_s", "mfu", "peak_memory_bytes", "grad_norm"):
        assert key in records[0]
    assert records[-1]["loss"] < records[0]["loss"] - 1.0
    assert 0 < records[-1]["mfu"] < 1.5 and records[-1]["tokens_per_s"] > 0
    assert result.eval_loss is not None and result.eval_loss < result.unigram_entropy
    assert (tmp_path / "run" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert [d.name for d in step_dirs(tmp_path / "run")] == ["step_00000010", "step_00000020"]
    assert {"start", "log", "checkpoint", "end"} <= {e["event"] for e in events}


def test_existing_run_is_not_clobbered_without_resume(nano_shards, tmp_path):
    train(_job(nano_shards, tmp_path / "run", "train.steps=2"))
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    with pytest.raises(ConfigError, match="--resume"):
        train(_job(nano_shards, tmp_path / "run", "train.steps=2"))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "flopwise.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_uninterrupted_run(nano_shards, tmp_path):
    steps = 20
    common = ["train", "--preset", "nano", "--steps", str(steps), "--quiet"]
    common += sum((["--set", s] for s in [f'data.shards="{nano_shards}"', *NANO, "checkpoint.every=5"]), [])
    full = _cli(*common, "--out", str(tmp_path / "full"))  # the uninterrupted run, beside the one to kill
    victim = _cli(*common, "--out", str(tmp_path / "killed"))
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 8:  # past the step-5 checkpoint
            break
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    killed_at = len(metrics.read_text().splitlines())
    assert killed_at < steps, "the run finished before it could be killed"
    assert full.wait(timeout=300) == 0, full.stdout.read()
    resumed = _cli(*common, "--out", str(tmp_path / "killed"), "--resume")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert "resuming from" in output
    reference, after = _losses(tmp_path / "full" / "metrics.jsonl"), _losses(metrics)
    assert sorted(after) == list(range(1, steps + 1))  # records past the checkpoint were rewritten, not duplicated
    assert after == reference


def nan_on(monkeypatch, bad) -> dict:
    """Build engines whose forward_backward returns NaN on the calls `bad(n)` picks (n counted from 1); the count."""
    calls = {"n": 0}

    class SpikyEngine(Engine):
        def forward_backward(self, inputs, targets, eod_id=None):
            loss = super().forward_backward(inputs, targets, eod_id)
            calls["n"] += 1
            return float("nan") if bad(calls["n"]) else loss

    monkeypatch.setattr(trainer_mod, "build_engine", SpikyEngine)
    return calls


def test_loss_guard_skips_spikes_and_rolls_back(nano_shards, tmp_path, monkeypatch):
    nan_on(monkeypatch, {7, 8, 9, 10}.__contains__)  # calls that return a spike: 3 in a row -> rollback
    events = []
    result = train(_job(nano_shards, tmp_path / "run", "train.steps=8", "checkpoint.every=4"), on_event=events.append)
    kinds = [e["event"] for e in events]
    assert kinds.count("skip") == 3 and kinds.count("rollback") == 1
    rollback = next(e for e in events if e["event"] == "rollback")
    assert rollback["step"] == 4  # the checkpoint before the spikes (steps 5-6 were good)
    assert result.steps == 8 and result.skipped_steps == 4 and result.rollbacks == 1


def test_a_loss_that_diverges_after_every_rollback_ends_the_run(nano_shards, tmp_path, monkeypatch):
    """Rolled back guard.max_rollbacks times to one checkpoint and diverging again: an error, not an endless loop."""
    calls = nan_on(monkeypatch, lambda n: n > 4)  # good for the first 4 steps, NaN from then on
    events = []
    with pytest.raises(FlopwiseError, match="loss keeps diverging: rolled back to step_00000004 2 times"):
        train(_job(nano_shards, tmp_path / "run", "train.steps=20", "checkpoint.every=4", "guard.max_rollbacks=2"),
              on_event=events.append)
    assert [e["event"] for e in events].count("rollback") == 2
    assert calls["n"] == 4 + 3 * 3  # three rounds of max_consecutive bad steps, the third ends it


def test_a_rollback_drops_the_records_it_will_log_again(nano_shards, tmp_path, monkeypatch):
    nan_on(monkeypatch, {8, 9, 10}.__contains__)  # steps 5-7 logged, then 3 bad: back to step 4, 5-7 logged again
    result = train(_job(nano_shards, tmp_path / "run", "train.steps=8", "checkpoint.every=4"))
    steps = [json.loads(line).get("step") for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, 9))
    assert [r["step"] for r in result.history] == list(range(1, 9))  # the history the caller gets, too


def test_a_new_checkpoint_gives_the_rollbacks_a_fresh_count(nano_shards, tmp_path, monkeypatch):
    """Two rollbacks to step 4, progress to a checkpoint at step 8, two more to it: with guard.max_rollbacks = 2
    the run finishes (the count is per checkpoint, not per run)."""
    nan_on(monkeypatch, (set(range(5, 11)) | set(range(15, 21))).__contains__)
    result = train(_job(nano_shards, tmp_path / "run", "train.steps=12", "checkpoint.every=4", "guard.max_rollbacks=2"))
    assert result.steps == 12 and result.rollbacks == 4


def test_a_run_that_starts_at_step_zero_starts_its_own_metrics(nano_shards, tmp_path):
    """An earlier attempt that never checkpointed (or another run's --metrics file) leaves records behind: a run
    starting at step 0 does not append its steps to them, and a torn line there does not swallow its first record."""
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.parent.mkdir()
    metrics.write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 9.0}\n{"step": 3, "loss": 6.2')
    train(_job(nano_shards, tmp_path / "run", "train.steps=3"), resume=True)  # --resume with no checkpoint: fresh
    losses = _losses(metrics)
    assert sorted(losses) == [1, 2, 3] and 9.0 not in losses.values()
    assert len([line for line in metrics.read_text().splitlines() if '"loss"' in line]) == 3


def test_divergence_without_checkpoint_is_a_clear_error(nano_shards, tmp_path, monkeypatch):
    class NanEngine(Engine):
        def forward_backward(self, inputs, targets, eod_id=None):
            super().forward_backward(inputs, targets, eod_id)
            return float("nan")

    monkeypatch.setattr(trainer_mod, "build_engine", NanEngine)
    with pytest.raises(FlopwiseError, match="no checkpoint to roll back to"):
        train(_job(nano_shards, tmp_path / "run", "train.steps=5"))


def test_truncated_checkpoint_is_reported_and_left_alone(nano_shards, tmp_path):
    train(_job(nano_shards, tmp_path / "run", "train.steps=3"))
    ckpt = latest_checkpoint(tmp_path / "run")
    data_file = next(p for p in ckpt.iterdir() if p.suffix == ".distcp")
    data_file.write_bytes(data_file.read_bytes()[:100])
    snapshot = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    with pytest.raises(CheckpointError, match=f"no intact checkpoint.*{data_file.name} has 100 bytes"):
        train(_job(nano_shards, tmp_path / "run", "train.steps=6"), resume=True)
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == snapshot


def test_checkpoint_of_another_model_shape_is_refused(nano_shards, tmp_path):
    train(_job(nano_shards, tmp_path / "run", "train.steps=2"))
    with pytest.raises(CheckpointError, match="holds another model .*hidden 64 -> 96"):
        train(_job(nano_shards, tmp_path / "run", "train.steps=4", "model.hidden=96", "model.heads=4"), resume=True)


def test_export_gives_a_safetensors_file_the_single_device_model_loads(nano_shards, tmp_path):
    job = _job(nano_shards, tmp_path / "run", "train.steps=3")
    result = train(job)
    dest = export_safetensors(tmp_path / "run", tmp_path / "model.safetensors")
    weights = load_file(str(dest))
    model = Transformer(job.model_config())
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert missing == ["output.weight"] and not unexpected  # tied: the head is the embedding
    assert model.output.weight is model.tok_embeddings.weight
    engine = Engine(job)
    engine.load(result.checkpoint, with_optimizer=False)
    for name, value in engine.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)


def test_optimizer_is_foreach_adamw_on_cpu_with_decay_on_matrices_only(tmp_path):
    """On a GPU the trainer takes the fused AdamW (benchmarks/RESULTS.md, "Kernels on an H200"); on a CPU the foreach
    one, whose step times the planner's CPU calibration was fitted to."""
    from flopwise.train.engine import build_optimizer

    job = load_config(None, ["train.weight_decay=0.1"], preset="nano", out=str(tmp_path))
    model = Transformer(job.model_config())
    opt = build_optimizer(model.parameters(), job)
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]  # train.optimizer = auto, on a CPU
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    assert decay and all(id(p) in decay for p in model.parameters() if p.dim() >= 2)
    assert not any(id(p) in decay for p in model.parameters() if p.dim() < 2)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def _recording(method, seen):
    def wrapper(self, *args, **kwargs):
        seen.append(dict(self.optimizer.defaults))
        return method(self, *args, **kwargs)

    return wrapper


def test_a_run_with_the_fused_optimizer_resumes_where_it_stopped(nano_shards, tmp_path, monkeypatch):
    """The GPU's fused AdamW keeps its step count as an fp32 tensor beside the parameters: a checkpoint taken with it
    loads back into it (torch's CPU build has the fused kernel too) and the resumed run matches the uninterrupted one."""
    fused = 'train.optimizer="fused"'
    seen = []
    monkeypatch.setattr(Engine, "clip_and_step", _recording(Engine.clip_and_step, seen))
    full = tmp_path / "full"
    train(_job(nano_shards, full, "train.steps=6", "checkpoint.every=3", fused))
    part = tmp_path / "part"
    train(_job(nano_shards, part, "train.steps=3", "checkpoint.every=3", fused))
    train(_job(nano_shards, part, "train.steps=6", "checkpoint.every=3", fused), resume=True)
    assert seen and all(d["fused"] and not d["foreach"] for d in seen)  # the fused kernel ran every step
    reference, resumed = _losses(full / "metrics.jsonl"), _losses(part / "metrics.jsonl")
    assert sorted(resumed) == list(range(1, 7))
    assert resumed == pytest.approx(reference, rel=1e-5)


def test_a_loaded_step_count_takes_the_form_the_optimizer_keeps():
    """Fused AdamW reads its step count as an fp32 tensor on the parameter's device (a GPU's, in training); the
    foreach one as a CPU tensor. A checkpoint's count (here fp64, for a parameter on another device) is converted."""
    from flopwise.train.engine import loaded_step

    here = torch.nn.Parameter(torch.zeros(4))
    elsewhere = torch.nn.Parameter(torch.empty(4, device="meta"))
    saved = torch.tensor(7.0, dtype=torch.float64)
    fused = loaded_step(torch.optim.AdamW([here], fused=True), saved, elsewhere)
    assert fused.device == elsewhere.device and fused.dtype == torch.float32
    plain = loaded_step(torch.optim.AdamW([here], foreach=True), saved, elsewhere)
    assert plain.device.type == "cpu" and plain.dtype == torch.float64 and plain is not saved


def test_the_optimizer_kernel_setting_is_read_and_checked(tmp_path):
    from flopwise.train.engine import fused_adamw

    assert fused_adamw("auto", {"cuda"}) and not fused_adamw("auto", {"cpu"})
    assert fused_adamw("fused", {"cpu"}) and not fused_adamw("foreach", {"cuda"})
    with pytest.raises(ConfigError, match="train.optimizer = 'adam8bit': must be one of auto, fused, foreach"):
        load_config(None, ['train.optimizer="adam8bit"'], preset="nano", out=str(tmp_path))


def test_clipping_scales_the_gradients_to_the_clip_norm_and_returns_the_norm_before(tmp_path):
    """clip_and_step scales every gradient by clip / norm (one foreach call) when the norm exceeds the clip, and leaves
    them alone below it; a rank with no gradient at all does not fail."""
    job = load_config(None, ["train.grad_clip=0.5", "train.micro_batch=2", "train.global_batch=2"], preset="nano",
                      out=str(tmp_path))
    engine = Engine(job)
    tokens = torch.randint(0, job.model_config().vocab_size, (2, 17))
    engine.forward_backward(tokens[:, :-1], tokens[:, 1:])
    def grads():
        return {name: p.grad.clone() for name, p in engine.named if p.grad is not None}

    before, seen = grads(), []
    assert len(before) == len(list(engine.named))
    engine.optimizer.step = lambda: seen.append(grads())  # the gradients as the optimizer would see them
    norm = engine.clip_and_step(lr=0.0)
    assert norm == pytest.approx(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in before.values()]))))
    assert norm > 0.5  # a random model's loss gradient is far above this clip
    clipped = seen[0]
    assert float(torch.linalg.vector_norm(torch.stack([g.norm() for g in clipped.values()]))) == pytest.approx(0.5,
                                                                                                           rel=1e-5)
    for name, g in clipped.items():
        torch.testing.assert_close(g, before[name] * (0.5 / (norm + 1e-6)))
    engine.zero_grad()  # no gradients at all: nothing to scale, no error
    engine.job.train.grad_clip = 1e-9
    assert engine.clip_and_step(lr=0.0) == 0.0


def test_the_device_is_cpu_or_cuda():
    from flopwise.train.engine import resolve_device

    assert resolve_device("cpu").type == "cpu"
    for name, message in (("mps", "flopwise trains on cpu or cuda"), ("meta", "flopwise trains on cpu or cuda"),
                          ("gpu0", "not a device")):
        with pytest.raises(ConfigError, match=message):
            resolve_device(name)
