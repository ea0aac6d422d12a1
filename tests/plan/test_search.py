import dataclasses

import pytest

from flopwise.errors import PlanError
from flopwise.hardware import get_accelerator
from flopwise.layout import Layout, parse_layout
from flopwise.models.config import ModelConfig, get_preset
from flopwise.plan.cost import CostModel
from flopwise.plan.search import balanced_split, search
from flopwise.plan.spec import Cluster, Training

A100 = get_accelerator("A100-80GB")
# reference/yuan2.md's example: 24 layers, h = 6144, 8 stages; the uniform split's first stage needs ~79 GB
YUAN_EXAMPLE = ModelConfig(135040, 24, 6144, 48, 48, 16384, 5120, lfa=True)


def test_search_returns_feasible_plans_fastest_first():
    res = search(get_preset("yuan2-2b"), Cluster(A100, 64), Training(384), top=5)
    assert len(res.plans) == 5 and res.feasible >= 5 and res.evaluated >= res.feasible
    times = [p.step_time for p in res.plans]
    assert times == sorted(times)
    for p in res.plans:
        assert p.fits and p.layout.gpus == 64 and 384 % (p.layout.dp * p.layout.micro_batch) == 0
        assert sum(p.breakdown.values()) == pytest.approx(p.step_time)
    # flash attention executes half of the full-sequence attention FLOPs that MFU counts (PaLM convention)
    assert 0.3 < res.plans[0].mfu < 0.8


def test_fixed_fields_are_respected():
    fixed = parse_layout("tp=8,pp=16,rc=full,sp=1")
    assert fixed == {"tp": 8, "pp": 16, "recompute": "full", "sp": True}
    res = search(get_preset("yuan2-102b"), Cluster(A100, 1024), Training(1152), fixed)
    for p in res.plans:
        assert (p.layout.tp, p.layout.pp, p.layout.dp, p.layout.recompute) == (8, 16, 8, "full")
        assert p.layout.sp


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe", "interleaved"])
def test_a_fixed_schedule_is_the_schedule_of_every_plan(schedule):
    """Interleaving is the schedule of vpp > 1: a fixed 1f1b or gpipe keeps one chunk per stage, a fixed interleaved
    more than one (the search used to try every vpp and rename the schedule)."""
    res = search(get_preset("yuan2-2b"), Cluster(A100, 64), Training(128), {"pp": 4, "schedule": schedule}, top=3)
    for p in res.plans:
        assert p.layout.schedule == schedule
        assert (p.layout.vpp > 1) == (schedule == "interleaved")


def test_fixed_sequence_parallelism_asks_for_tp():
    res = search(get_preset("yuan-1b"), Cluster(A100, 16), Training(64), {"sp": True}, top=3)
    assert all(p.layout.tp > 1 and p.layout.sp for p in res.plans)


@pytest.mark.parametrize("fixed, said", [
    ({"tp": 1, "sp": True}, "sp = 1 (sequence parallelism) needs tp > 1"),
    ({"pp": 4, "vpp": 2, "schedule": "1f1b"}, "schedule = 1f1b runs one model chunk per stage"),
    ({"pp": 4, "vpp": 1, "schedule": "interleaved"}, "schedule = interleaved needs pp > 1 and vpp > 1"),
    ({"dp": 32, "cp": 3}, "the fixed degrees (dp 32 x cp 3 = 96) do not divide the 32 GPUs"),
])
def test_a_contradictory_fixed_layout_is_refused_with_its_reason(fixed, said):
    with pytest.raises(PlanError) as exc:
        search(get_preset("tiny"), Cluster(A100, 32), Training(64, software="torch-eager"), fixed)
    assert said in str(exc.value)


# a device of 80e9 bytes (an "80 GB" A100 has 81920 MiB, on which the uniform split just fits): memory pressure
TIGHT = dataclasses.replace(A100, memory_bytes=80e9)


def test_balanced_split_moves_layers_off_the_first_and_last_stages():
    cm = CostModel(YUAN_EXAMPLE, Cluster(TIGHT, 8), Training(64))
    layout = Layout(pp=8, micro_batch=1)
    uniform = cm.evaluate(layout)
    assert not uniform.fits and uniform.memory[0]["total"] > 75e9
    split = balanced_split(cm, layout, 64)
    assert split is not None and sum(split) == 24
    assert split[0] < 3 and split[-1] < 3 and max(split) == 4  # Yuan's shape, e.g. [2,3,3,3,3,4,4,2]
    assert list(split[1:-1]) == sorted(split[1:-1])
    plan = cm.evaluate(layout, split)
    assert plan.fits and plan.memory[0]["total"] < 0.8 * uniform.memory[0]["total"]
    # the search finds it (and it beats every uniform split that fits)
    res = search(YUAN_EXAMPLE, Cluster(TIGHT, 8), Training(64), {"pp": 8, "tp": 1, "recompute": "none"})
    assert res.plans[0].pp_layers == split


def test_nothing_fits_explains_the_binding_constraint_and_an_alternative():
    with pytest.raises(PlanError) as exc:
        search(get_preset("yuan2-102b"), Cluster(A100, 8), Training(1152))
    msg = str(exc.value)
    assert "nothing fits" in msg and "optimizer" in msg and "on pipeline stage " in msg
    assert "closest feasible alternative: 32 GPUs" in msg  # 102B needs > 1.6 TB of model states


@pytest.mark.parametrize("gpus", [3, 6])
def test_a_partial_node_that_fits_nothing_gets_a_whole_node_alternative(gpus):
    # 3 x 4 = 12 GPUs is no whole number of 8-GPU nodes: the alternative must skip it, not fail on it
    with pytest.raises(PlanError) as exc:
        search(get_preset("yuan2-102b"), Cluster(A100, gpus), Training(7))
    msg = str(exc.value)
    assert "nothing fits" in msg and "gpus_per_node" not in msg
    alt = int(msg.split("closest feasible alternative: ")[1].split(" GPUs")[0])
    assert alt > gpus and alt % 8 == 0


def test_more_stages_than_layers():
    with pytest.raises(PlanError, match="only 24 layers.*closest feasible alternative without pp=32"):
        search(get_preset("yuan2-2b"), Cluster(A100, 64), Training(384), {"pp": 32})


def test_batch_not_divisible():
    with pytest.raises(PlanError, match="not divisible.*closest feasible alternative"):
        search(get_preset("yuan2-2b"), Cluster(A100, 64), Training(100), {"dp": 64})


def test_full_102b_search_is_fast_enough_to_be_interactive():
    res = search(get_preset("yuan2-102b"), Cluster(A100, 1024), Training(1152, tokens=1e12))
    best = res.plans[0]
    assert res.evaluated > 300 and best.fits
    assert 10 < best.step_time < 60 and 0.3 < best.mfu < 0.6
    assert best.days == pytest.approx(1e12 / (best.tokens_per_s_per_gpu * 1024) / 86400)


def test_layers_that_do_not_divide_the_stages_are_interleaved_over_an_uneven_split():
    # 30 layers on 4 pipeline ranks (as Llama 3's 126 on 16): model chunks as even as the layers allow
    model = ModelConfig(32000, 30, 4096, 32, 8, 14336, 4096, lfa=False, mlp="swiglu")
    fixed = {"tp": 8, "pp": 4, "dp": 1, "micro_batch": 8, "recompute": "none", "sp": True}
    res = search(model, Cluster(get_accelerator("H100-SXM"), 32), Training(32, software="te"), fixed, top=50)
    best = res.plans[0]
    assert best.layout.vpp > 1 and best.layout.schedule == "interleaved"
    split = best.layout.split
    assert len(split) == 4 * best.layout.vpp and sum(split) == 30
    assert split[0] == split[-1] == min(split)
    plain = [p for p in res.plans if p.layout.vpp == 1]
    assert plain and best.breakdown["bubble"] < plain[0].breakdown["bubble"]


def test_a_blank_recompute_takes_the_least_recomputation_that_fits():
    # 8k tokens per micro-batch on A100-40GB: no recomputation does not fit, every second block recomputed does
    model = ModelConfig(32000, 32, 4096, 32, 8, 14336, 8192, lfa=False, mlp="swiglu")
    cluster, training = Cluster(get_accelerator("A100-40GB"), 8), Training(16, software="te")
    fixed = {"tp": 1, "pp": 1, "micro_batch": 1, "zero": 3}
    best = search(model, cluster, training, fixed, top=1).plans[0]
    assert (best.layout.recompute, best.layout.recompute_every) == ("full", 2)
    cm = CostModel(model, cluster, training)
    assert not cm.evaluate(best.layout.replace(recompute="none", recompute_every=1)).fits
    assert best.step_time < cm.evaluate(best.layout.replace(recompute_every=1)).step_time
    # a stated 'full' means every block
    stated = search(model, cluster, training, dict(fixed, recompute="full"), top=1).plans[0]
    assert stated.layout.recompute_every == 1
