"""The planner and the trainer agree on layouts: every plan the search returns, written as a job config, is the
layout the trainer resolves and accepts; and over a grid of model shapes, GPU counts and layouts, the planner
can cost exactly the layouts the trainer accepts."""

import itertools
import random

import pytest

from flopwise.errors import FlopwiseError, LayoutError, PlanError
from flopwise.hardware import get_accelerator
from flopwise.layout import Layout
from flopwise.models.config import ModelConfig
from flopwise.plan.cost import CostModel
from flopwise.plan.search import search
from flopwise.plan.spec import Cluster, Training
from flopwise.train.config import config_from_dict, job_for_layout, resolve_layout

A100 = get_accelerator("A100-80GB")
SHAPES = {
    "gqa": ModelConfig(vocab_size=512, layers=4, hidden=64, heads=4, kv_heads=2, ffn=128, seq_len=64),
    "odd-vocab": ModelConfig(vocab_size=513, layers=3, hidden=64, heads=8, kv_heads=8, ffn=192, seq_len=64, lfa=False),
    "six-heads": ModelConfig(vocab_size=1000, layers=6, hidden=96, heads=6, kv_heads=3, ffn=200, seq_len=48),
    "mha-gelu": ModelConfig(vocab_size=768, layers=8, hidden=128, heads=8, kv_heads=8, ffn=512, seq_len=64,
                            mlp="gelu", lfa=False),
    # mixture of experts: ep and expert tensor parallelism in every combination the search and the check allow
    "moe": ModelConfig(vocab_size=512, layers=4, hidden=64, heads=4, kv_heads=4, ffn=96, seq_len=64, experts=4,
                       top_k=2),
}
GPUS = (1, 3, 4, 12)
FIXED = ({}, {"tp": 2}, {"ep": 2}, {"pp": 2}, {"zero": 1}, {"recompute": "full", "recompute_every": 2},
         {"schedule": "gpipe"}, {"sp": False}, {"tp": 4}, {"zero": 3, "dp_shard": 2})


def _cluster(gpus: int) -> Cluster:
    return Cluster(A100, gpus, 4 if gpus > 8 else 8)


def _trainer_layout(layout: Layout, model: ModelConfig, global_batch: int) -> Layout:
    """What the trainer runs for this layout: through the job config (as `plan --write-config` writes it)."""
    job = config_from_dict(job_for_layout(layout, model, global_batch=global_batch).to_dict())
    resolved, _ = resolve_layout(job, layout.gpus)
    return resolved.replace(split=resolved.split or (model.layers,))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_plan_the_search_returns_is_the_layout_the_trainer_runs(shape):
    model, plans = SHAPES[shape], 0
    for gpus, global_batch, fixed in itertools.product(GPUS, (12,), FIXED):
        try:
            result = search(model, _cluster(gpus), Training(global_batch), dict(fixed), top=10_000, explain=False)
        except PlanError:
            continue
        for plan in result.plans:
            assert _trainer_layout(plan.layout, model, global_batch) == plan.layout
            plans += 1
    assert plans > 100  # the grid reaches many layouts, not a handful


def _random_layouts(rng: random.Random, n: int):
    """Layouts drawn over every field, valid ones included often enough to matter."""
    for _ in range(n):
        yield Layout(
            dp=rng.choice((1, 1, 2, 2, 3, 4)), zero=rng.choice((0, 0, 0, 1, 1, 2, 3)),
            dp_shard=rng.choice((0, 0, 0, 0, 1, 2)), tp=rng.choice((1, 1, 2, 2, 3, 4)), sp=rng.random() < 0.5,
            pp=rng.choice((1, 1, 2, 2, 3)), vpp=rng.choice((1, 1, 1, 2)),
            schedule=rng.choice(("1f1b", "1f1b", "gpipe", "interleaved")), micro_batch=rng.choice((1, 1, 2, 3, 4)),
            recompute=rng.choice(("none", "selective", "full")), recompute_every=rng.choice((1, 1, 1, 2)),
            ep=rng.choice((1,) * 9 + (2,)), cp=rng.choice((1,) * 9 + (2,)),
        )


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_planner_costs_exactly_what_the_trainer_runs(shape):
    """A layout the planner refuses, the trainer refuses too (or, its micro-batch being an upper bound, runs
    another one); a layout the planner costs is the one the trainer runs."""
    model, rng = SHAPES[shape], random.Random(shape)
    costed = 0
    for layout in _random_layouts(rng, 500):
        global_batch = rng.choice((8, 12, 16))
        gpn = 4 if layout.gpus > 8 and layout.gpus % 4 == 0 else 8 if layout.gpus <= 8 else layout.gpus
        try:
            ran = _trainer_layout(layout, model, global_batch).replace(split=None)
        except LayoutError:
            ran = None
        try:
            CostModel(model, Cluster(A100, layout.gpus, gpn), Training(global_batch)).evaluate(layout)
        except LayoutError:
            assert ran != layout
            continue
        costed += 1
        assert ran == layout
    assert costed > 10


def test_tp_above_kv_heads_and_an_odd_vocabulary_are_refused_on_both_sides():
    gqa, odd = SHAPES["gqa"], SHAPES["odd-vocab"]
    assert all(p.layout.tp <= 2 for p in search(gqa, _cluster(8), Training(16), top=10_000).plans)  # kv_heads 2
    assert all(p.layout.tp == 1 for p in search(odd, _cluster(4), Training(16), top=10_000).plans)  # vocab 513
    for model, tp in ((gqa, 4), (odd, 2)):
        with pytest.raises(FlopwiseError, match="tensor parallel degree"):
            CostModel(model, _cluster(tp), Training(8)).evaluate(Layout(tp=tp))
        with pytest.raises(FlopwiseError, match="tensor parallel degree"):
            _trainer_layout(Layout(tp=tp), model, 8)
