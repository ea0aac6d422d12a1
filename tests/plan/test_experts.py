"""The planner's mixture-of-experts terms: expert memory split by ep (outside ZeRO), the all-to-all on the link
the ep group spans, load imbalance, and the search over ep (yuan2-m32)."""

import json

import pytest

from flopwise.errors import ConfigError, PlanError
from flopwise.hardware import COLLECTIVE_LATENCY_S, GB, get_accelerator
from flopwise.layout import Layout
from flopwise.models.config import get_preset
from flopwise.plan.cost import CostModel
from flopwise.plan.experts import expert_gemm_time, expert_params_per_layer, moe_layer_time
from flopwise.plan.memory import RESERVED_BYTES
from flopwise.plan.search import search
from flopwise.plan.spec import Cluster, Training

M32 = get_preset("yuan2-m32")


def model(gpus=32, gb=256, preset=M32, **kw):
    return CostModel(preset, Cluster(get_accelerator("A100-80GB"), gpus), Training(gb, **kw))


def test_expert_states_are_split_by_ep_and_their_optimizer_state_zero_sharded_over_ep_dp():
    cm = model(software="te")  # Megatron's mixed precision: bf16 weights, fp32 master copy in the optimizer
    experts = M32.layers * expert_params_per_layer(M32)
    assert experts == M32.layers * 3 * M32.experts * M32.hidden * M32.ffn
    one = cm.stage_memory(Layout(dp=32), 0, M32.layers, 8)
    eight = cm.stage_memory(Layout(dp=32, ep=8), 0, M32.layers, 8)
    # bf16 mixed precision: 2 + 2 bytes of weights and gradients, 12 of optimizer state per parameter
    assert one["params"] - eight["params"] == pytest.approx(2 * experts * 7 / 8)
    assert one["grads"] - eight["grads"] == pytest.approx(2 * experts * 7 / 8)
    assert one["optimizer"] - eight["optimizer"] == pytest.approx(12 * experts * 7 / 8)
    # ZeRO-1 shards the rest of the model over dp = 32, the experts' optimizer state over the 4 ranks holding
    # the same experts (ep_dp = dp / ep); ZeRO-3 their gradients and weights too
    zero1 = cm.stage_memory(Layout(dp=32, zero=1, ep=8), 0, M32.layers, 8)
    dense_part = cm.stage_params(Layout(dp=32, zero=1, ep=8), 0, M32.layers) - experts / 8
    assert zero1["optimizer"] == pytest.approx(12 * (dense_part / 32 + experts / 8 / 4))
    assert zero1["grads"] == eight["grads"] and zero1["params"] == eight["params"]
    zero3 = cm.stage_memory(Layout(dp=32, zero=3, ep=8), 0, M32.layers, 8)
    assert zero3["grads"] == pytest.approx(2 * (dense_part / 32 + experts / 8 / 4))
    assert zero3["params"] == pytest.approx(zero3["grads"])
    # ... and gathers this rank's 4 experts of a layer (of 32) with the rest of the layer
    per_layer = expert_params_per_layer(M32)
    assert zero3["other"] == pytest.approx(RESERVED_BYTES + 2 * 2 * (cm.layer_params.per_rank(1) - per_layer * 7 / 8))


def test_all_to_all_crosses_the_link_the_ep_group_spans():
    cm = model(gpus=32)
    layout = Layout(dp=16, pp=2, ep=4, micro_batch=1)
    rows = cm.seq * M32.top_k * M32.hidden * 2  # bf16 rows of one micro-batch, top_k per token
    one = rows * 3 / 4 / cm.bus_bandwidth(4) + 2 * COLLECTIVE_LATENCY_S
    compute, a2a = moe_layer_time(cm, layout, 1.0)
    assert compute == 0 and a2a == pytest.approx(4 * one)  # dispatch + combine, forward and backward
    _, inside = moe_layer_time(cm, layout.replace(ep=8), 1.0)
    _, across = moe_layer_time(cm, layout.replace(ep=16), 1.0)
    assert across / inside > 5  # 16 ranks leave the 8-GPU node: network instead of NVLink
    compute, skewed = moe_layer_time(cm, layout, 1.5)
    assert skewed == pytest.approx(1.5 * a2a - 0.5 * 8 * COLLECTIVE_LATENCY_S)
    assert compute == pytest.approx(0.5 * expert_gemm_time(cm, layout))
    assert moe_layer_time(cm, layout.replace(ep=1), 1.0) == (0.0, 0.0)
    with pytest.raises(ConfigError, match="expert_imbalance"):
        Training(8, expert_imbalance=0.5)


def test_a_dense_model_costs_the_same_and_has_no_ep_time():
    tiny = get_preset("yuan-1b")
    plan = model(gpus=8, preset=tiny).evaluate(Layout(dp=8, zero=1))
    assert plan.breakdown["ep"] == 0.0
    assert moe_layer_time(model(preset=tiny), Layout(dp=8), 2.0) == (0.0, 0.0)


def test_the_search_places_yuan2_m32_with_expert_parallelism():
    result = search(M32, Cluster(get_accelerator("A100-80GB"), 32), Training(256), fixed={"micro_batch": 1, "pp": 4})
    best = result.plans[0]
    assert best.fits and best.layout.ep > 1 and best.layout.tp == 1 and best.layout.dp % best.layout.ep == 0
    assert best.peak_memory < 80 * GB
    assert best.breakdown["ep"] > 0
    # without expert parallelism, tensor parallelism or ZeRO the same shape does not fit: each rank would hold
    # all 32 experts of its stage, whole, with their whole optimizer state
    with pytest.raises(PlanError):
        search(M32, Cluster(get_accelerator("A100-80GB"), 32), Training(256),
               fixed={"micro_batch": 1, "pp": 4, "ep": 1, "tp": 1, "zero": 0})


def test_expert_tensor_parallelism_cuts_expert_states_and_gemms_by_tp():
    cm = model(software="te")  # 12 bytes of optimizer state per parameter (the ZeRO paper's mixed precision)
    experts = M32.layers * expert_params_per_layer(M32)
    layout = Layout(dp=16, tp=2, ep=8, zero=1)
    # this rank's TP half of the experts, of which the ep group's other 7 ranks hold 7/8
    assert cm.stage_params(layout.replace(ep=1), 0, M32.layers) - cm.stage_params(layout, 0, M32.layers) == \
        pytest.approx(experts / 2 * 7 / 8)
    states = cm.stage_memory(layout, 0, M32.layers, 8)
    dense_part = cm.stage_params(layout, 0, M32.layers) - experts / 16
    assert states["optimizer"] == pytest.approx(12 * (dense_part / 16 + experts / 16 / 2))  # experts: over ep_dp 2
    assert expert_gemm_time(cm, layout) < 0.6 * expert_gemm_time(cm, layout.replace(tp=1))
    other = cm.stage_memory(Layout(dp=16, tp=2, ep=16, zero=3), 0, M32.layers, 8)["other"]
    assert other == pytest.approx(RESERVED_BYTES + 2 * 2 * (cm.layer_params.per_rank(2) - expert_params_per_layer(M32) / 2))
    plans = search(M32, Cluster(get_accelerator("A100-80GB"), 32), Training(256),
                   fixed={"micro_batch": 1, "pp": 4, "tp": 2}, top=100).plans
    assert any(p.layout.tp == 2 and p.layout.ep > 1 and p.fits for p in plans)  # the search proposes ep x tp


def test_flopwise_plan_gives_yuan2_m32_an_expert_parallel_layout(capsys):
    from flopwise.cli import main

    argv = ["plan", "--preset", "yuan2-m32", "--gpus", "32", "--global-batch", "256", "--layout", "pp=4,mb=1",
            "--json", "--expert-imbalance", "1.2"]
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code in (0, None)
    best = json.loads(capsys.readouterr().out)["plans"][0]
    assert best["layout"]["ep"] > 1 and best["fits"] and best["breakdown_s"]["ep"] > 0
    try:
        main([*argv[:-1], "0.5"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "error: expert_imbalance = 0.5: must be at least 1" in capsys.readouterr().err


def test_zero3_gathers_no_expert_weights_when_ep_equals_dp():
    cm = model()
    layout = Layout(dp=32, zero=3, ep=32)
    other = cm.stage_memory(layout, 0, M32.layers, 8)["other"]
    dense_layer = cm.layer_params.per_rank(1) - expert_params_per_layer(M32)
    assert other == pytest.approx(RESERVED_BYTES + 2 * dense_layer * 2)


@pytest.mark.parametrize("zero", [0, 1, 3])
def test_expert_gradients_cross_only_the_ranks_holding_the_same_experts(zero):
    """With ep = dp no other rank holds a rank's experts: their gradients are reduced nowhere, so doubling the
    experts leaves the data-parallel time as it was; with ep = 1 they are ordinary weights reduced over dp."""
    more = M32.__class__(**{**M32.__dict__, "experts": 2 * M32.experts})

    def dp_time(preset, ep):
        cm = model(gpus=32, preset=preset, software="flopwise")
        return cm.evaluate(Layout(dp=32, zero=zero, ep=ep)).breakdown["dp"]

    assert dp_time(more, 32) == pytest.approx(dp_time(M32, 32), rel=0.01)  # only the router grows
    assert dp_time(more, 1) > 1.5 * dp_time(M32, 1)
    # ep_dp = 4 ranks share each expert: some expert traffic, less than all 32 reducing every expert
    assert dp_time(M32, 32) < dp_time(M32, 8) < dp_time(M32, 1)


def test_an_moe_block_adds_its_host_time_unless_the_step_is_one_cuda_graph(monkeypatch):
    """experts.MOE_BLOCK_HOST_S per MoE block and micro-batch, added to the step (a dropless dispatcher's host sync
    keeps the host from running ahead); none under a full-iteration CUDA graph, none for a dense model."""
    from flopwise.plan import experts

    layout = Layout(dp=8, ep=8, micro_batch=1)
    dense = get_preset("yuan2-2b")

    def step(preset, host, graphs=False, lay=layout):
        monkeypatch.setattr(experts, "MOE_BLOCK_HOST_S", host)
        cm = CostModel(preset, Cluster(get_accelerator("H100-SXM"), 8), Training(64, software="te", cuda_graphs=graphs))
        return cm.evaluate(lay)

    base, slow = step(M32, 0.0), step(M32, 2e-3)
    host = slow.breakdown["host"] - base.breakdown["host"]
    assert host == pytest.approx(M32.layers * base.microbatches * 2e-3)  # every block, every micro-batch
    assert slow.step_time > base.step_time + host  # (the straggler term scales it too)
    assert step(M32, 2e-3, graphs=True).step_time == pytest.approx(base.step_time)
    one = Layout(dp=8, micro_batch=1)
    assert step(dense, 2e-3, lay=one).step_time == pytest.approx(step(dense, 0.0, lay=one).step_time)


def test_an_overlapped_all_to_all_hides_behind_its_blocks_compute():
    """Megatron's moe_a2a_overlap: each MoE block's all-to-all runs beside that block's forward and backward compute;
    only what is longer than the compute is exposed."""
    layout = Layout(dp=32, ep=8, micro_batch=1)
    cm = model()
    lc = cm.layer_cost(1, False, 1, "none")
    expert, a2a = moe_layer_time(cm, layout, 1.0)
    assert a2a > 0
    exposed = max(0.0, a2a - (lc.fwd + lc.bwd + expert))
    plain, overlapped = model().evaluate(layout), model(a2a_overlap=True).evaluate(layout)
    assert overlapped.breakdown["ep"] == pytest.approx(plain.breakdown["ep"] * exposed / a2a)
    assert overlapped.breakdown["compute"] == plain.breakdown["compute"]
    with pytest.raises(PlanError, match="a2a_overlap overlaps the expert all-to-all.*this model is dense"):
        model(preset=get_preset("llama3-8b"), a2a_overlap=True)


def test_moe_parallel_folding_keeps_experts_whole_over_an_ep_group_across_tp_ranks():
    """Megatron's etp 1 under tp 2: 16 GPUs as tp 2 x dp 8 for attention and ep 16 for the experts, each rank holding
    8 of Qwen3-30B's 128 experts whole, dispatching its own half of the micro-batch's tokens; the MLP's TP collectives
    gone. flopwise's trainer cuts experts by tp and refuses it."""
    from flopwise.errors import LayoutError
    from flopwise.plan.experts import expert_params_per_rank

    qwen = get_preset("qwen3-30b-a3b")
    cm = CostModel(qwen, Cluster(get_accelerator("H100-SXM"), 16), Training(256, software="te"))
    folded = Layout(tp=2, dp=8, ep=16, etp=1, zero=1, micro_batch=1)
    cm.check(folded)  # ep 16 > dp 8: folded over the TP ranks
    with pytest.raises(LayoutError, match="ep x etp = 16 x 2 must divide tp x cp x dp = 4 x 1 x 4"):
        cm.check(Layout(tp=4, dp=4, ep=16, etp=2, zero=1, micro_batch=1))
    assert folded.replace(etp=2).etp == 0 and folded.expert_dp == 1  # etp = tp is spelled 0: one spelling
    assert expert_params_per_rank(qwen, folded) == expert_params_per_layer(qwen) / 16
    terms = cm.layer_terms(folded, 8, 0.0)
    assert terms.cost.tp == pytest.approx(cm.layer_cost(2, True, 1, "none").tp / 2)
    # the all-to-all moves each rank's own 2048 of the 4096 tokens, over 16 GPUs
    _, a2a = moe_layer_time(cm, folded, 1.0)
    plain = Layout(tp=1, dp=16, ep=16, zero=1, micro_batch=1)
    half = CostModel(qwen.replace(seq_len=2048), Cluster(get_accelerator("H100-SXM"), 16), Training(256, software="te"))
    assert a2a == pytest.approx(moe_layer_time(half, plain, 1.0)[1])
    flopwise = CostModel(qwen, Cluster(get_accelerator("H100-SXM"), 16), Training(256))
    with pytest.raises(LayoutError, match="flopwise's trainer cuts experts by tp"):
        flopwise.check(folded)


def test_node_copies_counts_the_other_nodes_a_token_reaches():
    """One copy per other node holding at least one of the token's top_k experts: the closed form against a draw."""
    import random

    from flopwise.plan.experts import node_copies

    rng = random.Random(0)
    for experts, top_k, nodes in ((128, 8, 2), (256, 8, 8), (64, 6, 4)):
        per = experts // nodes
        draws = [len({e // per for e in rng.sample(range(experts), top_k)} - {0}) for _ in range(20000)]
        assert node_copies(experts, top_k, nodes) == pytest.approx(sum(draws) / len(draws), rel=0.02)
    assert node_copies(128, 8, 1) == 0.0 and node_copies(16, 1, 2) == pytest.approx(0.5)


def test_a_node_once_dispatcher_sends_a_token_once_per_other_node():
    """EP 16 over two 8-GPU nodes: NCCL's all-to-all (alltoall) prices all 15/16 of a rank's rows at the NIC's rate;
    DeepEP / HybridEP send a token once per other node it reaches over the NIC and fan it out over NVLink there, the two
    at once. Inside a node the dispatcher changes nothing."""
    from flopwise.plan.experts import node_copies

    qwen = get_preset("qwen3-30b-a3b")
    layout = Layout(dp=16, ep=16, micro_batch=1)
    cm = CostModel(qwen, Cluster(get_accelerator("H100-SXM"), 16), Training(1024, software="te"))
    rows = cm.seq * qwen.top_k * qwen.hidden * 2
    nic = cm.bus_bandwidth(16)
    _, a2a = moe_layer_time(cm, layout, 1.0)
    assert a2a == pytest.approx(4 * (rows * 15 / 16 / nic + 2 * COLLECTIVE_LATENCY_S))
    hybrid = CostModel(qwen, cm.cluster, Training(1024, software="te", dispatcher="hybridep"))
    _, once = moe_layer_time(hybrid, layout, 1.0)
    tokens = rows / qwen.top_k
    # the NIC: ~1 row per token; NVLink: the node's own experts' 7/16 and the fan-out of 7/8 of the 8/16 arriving
    nvlink = rows * (7 / 16 + 8 / 16 * 7 / 8) / cm.bus_bandwidth(8, members=8)
    assert once == pytest.approx(4 * (max(tokens * node_copies(128, 8, 2) / nic, nvlink) + 2 * COLLECTIVE_LATENCY_S))
    assert once < a2a / 5
    inside = Layout(dp=16, ep=8, micro_batch=1)
    assert moe_layer_time(hybrid, inside, 1.0) == moe_layer_time(cm, inside, 1.0)
    with pytest.raises(ConfigError, match="dispatcher = 'flex'"):
        Training(8, dispatcher="flex")
    with pytest.raises(PlanError, match="dispatcher 'deepep' routes an MoE model's tokens; this model is dense"):
        model(preset=get_preset("llama3-8b"), dispatcher="deepep")


def test_a_rows_dispatcher_column_is_read_blank_as_megatrons_default():
    """The MoE rows' `dispatcher` column: deepep / hybridep / alltoall as stated, blank as alltoall (Megatron's
    default); anything else refused by name."""
    import csv
    from pathlib import Path

    from flopwise.errors import DataError
    from flopwise.plan.validate import row_inputs

    path = Path(__file__).resolve().parents[2] / "benchmarks/planner_calibration/moe/fresh_holdout_55_moe.csv"
    row = next(r for r in csv.DictReader(path.open(newline="")) if r["dispatcher"] == "hybridep")
    assert row_inputs(row)[2].dispatcher == "hybridep"
    assert row_inputs({**row, "dispatcher": ""})[2].dispatcher == "alltoall"
    with pytest.raises(DataError, match="column 'dispatcher' = 'allgather'"):
        row_inputs({**row, "dispatcher": "allgather"})
