"""The trainer's pipeline split and start-up memory table are the planner's; recomputation is exact."""

import io

import pytest
import torch
from rich.console import Console

from flopwise.cli.train import PIPELINE_COLUMNS, pipeline_table
from flopwise.hardware import cpu_accelerator
from flopwise.plan.cost import CostModel
from flopwise.plan.search import best_split
from flopwise.plan.spec import Cluster, Training
from flopwise.train import forecast
from flopwise.train.config import load_config, resolve_layout
from flopwise.train.engine import Engine
from flopwise.train.memory_probe import saved_tensor_peak

YUAN_STAGES = ["model.layers=8", "model.hidden=256", "model.heads=8", "model.kv_heads=8", "model.ffn=1024",
               "model.seq_len=256", "train.global_batch=16", "train.micro_batch=1", "parallel.pp=4"]


def test_the_printed_pipeline_table_is_the_planners(tmp_path):
    job = load_config(overrides=YUAN_STAGES, preset="tiny")
    layout, microbatches = resolve_layout(job, 4)
    acc = cpu_accelerator()
    cm = forecast.cost_model(job, acc, 4, 4, "fp32")
    split = forecast.choose_split(cm, layout, 8)
    plan = forecast.forecast(cm, layout.replace(split=split))
    # the planner, asked directly, gives the same split and the same numbers
    planner = CostModel(job.model_config(), Cluster(acc, 4, 4), Training(16, precision="fp32", seq_len=256))
    assert split == best_split(planner, layout) and sum(split) == 8
    rows = forecast.stage_table(plan)
    out = io.StringIO()
    Console(file=out, width=200).print(pipeline_table(rows, list(split)))
    printed = out.getvalue()
    for rank, row in enumerate(rows):
        expected = planner.stage_memory(layout, rank, plan.pp_layers[rank], microbatches)
        assert row["layers"] == sum(split[rank::4])
        for key in ("params", "grads", "optimizer", "activations", "logits", "other", "total"):
            assert row[key] == expected[key]
        for parts in PIPELINE_COLUMNS.values():
            assert f"{sum(expected[k] for k in parts) / 1e9:.3g}" in printed
    assert f"pipeline split {','.join(map(str, split))}" in printed
    assert rows[0]["in_flight"] == 4 and rows[-1]["in_flight"] == 1  # 1F1B: stage i keeps p - i
    # the eager loss's gradients live only inside its backward: an allocator's peak sees them, saved tensors do not
    assert plan.memory[0]["loss_backward"] == 0 and plan.memory[-1]["loss_backward"] > 0  # on the loss's stage
    single = planner.evaluate(layout.replace(pp=1, dp=4, split=None))
    stage = single.memory[0]
    assert forecast.tensor_bytes(stage) - forecast.tensor_bytes(stage, transients=False) == stage["loss_backward"] > 0
    for transients in (True, False):
        record = forecast.comparison(planner, single, 1.0, "cpu", 1e9, "the label", 3, transients=transients)
        assert record["predicted_memory_bytes"] == forecast.tensor_bytes(stage, transients)
    # so does the layer that full recomputation rebuilds in the backward: printed with the activations, left out of
    # a saved-tensor comparison (it read +99% against one on `nano`)
    full = planner.evaluate(layout.replace(pp=1, dp=4, split=None, recompute="full")).memory[0]
    assert full["recompute_layer"] > 0 and stage["recompute_layer"] == 0
    assert forecast.tensor_bytes(full) - forecast.tensor_bytes(full, transients=False) == pytest.approx(
        full["loss_backward"] + full["recompute_layer"])
    assert PIPELINE_COLUMNS["activations"] == ("activations", "recompute_layer")


def _step(job, inputs, targets):
    engine = Engine(job)
    with saved_tensor_peak(engine) as saved:
        loss = engine.forward_backward(inputs, targets)
    engine.clip_and_step(1e-3)
    return loss, saved["peak"], [p.detach().clone() for _, p in engine.named], engine


BASE = ["train.global_batch=4", "train.micro_batch=4", "model.layers=4"]


@pytest.fixture(scope="module")
def batch_and_reference():
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randint(0, 512, (4, 64), generator=gen), torch.randint(0, 512, (4, 64), generator=gen))
    return batch, _step(load_config(overrides=BASE, preset="nano"), *batch)


@pytest.mark.parametrize("recompute", [['parallel.recompute="selective"'],
                                       ['parallel.recompute="full"', "parallel.recompute_every=2"],
                                       ['parallel.recompute="full"']])
def test_recomputation_changes_memory_not_results(batch_and_reference, recompute):
    batch, (ref_loss, ref_peak, ref_params, _) = batch_and_reference
    loss, peak, params, engine = _step(load_config(overrides=BASE + recompute, preset="nano"), *batch)
    assert loss == ref_loss
    for a, b in zip(params, ref_params, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    assert peak < ref_peak  # something was dropped and recomputed
    blocks = list(engine.model.layers.values())
    if engine.layout.recompute == "selective":
        assert all(b.attn.core.func is torch.utils.checkpoint.checkpoint for b in blocks)
    else:
        wrapped = [getattr(b.forward, "func", None) is torch.utils.checkpoint.checkpoint for b in blocks]
        assert wrapped == [i % engine.layout.recompute_every == 0 for i in range(4)]


def test_a_compiled_run_is_forecast_with_fused_elementwise_kernels():
    """train.compile = true fuses the blocks' elementwise chains: the forecast costs them so, and takes less time."""
    acc = cpu_accelerator()
    eager = forecast.cost_model(load_config(overrides=YUAN_STAGES, preset="tiny"), acc, 4, 4, "fp32")
    compiled = forecast.cost_model(load_config(overrides=[*YUAN_STAGES, "train.compile=true"], preset="tiny"),
                                   acc, 4, 4, "fp32")
    assert not eager.training.compiled and compiled.training.compiled
    assert compiled.training.profile.fused_elementwise and not eager.training.profile.fused_elementwise
    layout = resolve_layout(load_config(overrides=YUAN_STAGES, preset="tiny"), 4)[0].replace(split=(2, 2, 2, 2))
    assert compiled.evaluate(layout).step_time < eager.evaluate(layout).step_time
