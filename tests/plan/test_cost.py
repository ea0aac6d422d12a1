import pytest

from flopwise.errors import LayoutError
from flopwise.hardware import COLLECTIVE_LATENCY_S, get_accelerator
from flopwise.layout import Layout
from flopwise.models.config import ModelConfig, get_preset
from flopwise.plan.cost import CostModel, ring_time
from flopwise.plan.spec import Cluster, Training

# tiny vocabulary: the LM head is negligible, so stages are (nearly) equal
CFG = ModelConfig(
    vocab_size=256,
    layers=16,
    hidden=4096,
    heads=32,
    kv_heads=32,
    ffn=16384,
    seq_len=2048,
    lfa=False,
    mlp="gelu",
)


def model(gpus=32, gb=64, **kw):
    return CostModel(CFG, Cluster(get_accelerator("A100-80GB"), gpus), Training(gb, **kw))


@pytest.mark.parametrize("p,m", [(4, 16), (8, 8), (2, 32)])
def test_1f1b_and_gpipe_bubble_is_p_minus_1_over_m(p, m):
    cm = model(gpus=p, gb=m)
    plan = cm.evaluate(Layout(tp=1, pp=p, dp=1, micro_batch=1))
    busy = plan.breakdown["compute"] + plan.breakdown["recompute"] + plan.breakdown["tp"]
    assert plan.breakdown["bubble"] / busy == pytest.approx((p - 1) / m, rel=0.02)
    gpipe = cm.evaluate(Layout(tp=1, pp=p, dp=1, micro_batch=1, schedule="gpipe"))
    assert gpipe.breakdown["bubble"] == pytest.approx(plan.breakdown["bubble"])
    assert gpipe.memory[0]["activations"] == pytest.approx(plan.memory[0]["activations"] * m / min(m, p))
    assert gpipe.memory[-1]["activations"] == pytest.approx(
        plan.memory[-1]["activations"] * m
    )  # all m in flight


@pytest.mark.parametrize("software, allowed", [("megatron", True), ("te", True), ("megatron-lm", True),
                                                ("deepspeed", True), ("deepspeed-hf", True), ("torch-compile", False),
                                                ("torch-eager", False), ("flopwise", False)])
def test_fewer_microbatches_than_stages_is_all_fill_and_drain_where_the_schedule_allows_it(software, allowed):
    """(m - 1) max t_i + sum t_i still holds with m < p: 2 micro-batches through 8 stages take (2 + 7) stage
    times, a bubble of 7 / 2 of the busy time, and each stage holds at most m micro-batches' activations."""
    cm = model(gpus=8, gb=2, software=software)
    layout = Layout(tp=1, pp=8, dp=1, micro_batch=1)
    if not allowed:
        with pytest.raises(LayoutError, match="needs at least 8 micro-batches per step: this trainer's schedule"):
            cm.evaluate(layout)
        return
    with pytest.raises(LayoutError, match="the interleaved schedule does"):  # interleaving asks one per stage
        cm.evaluate(Layout(tp=1, pp=8, dp=1, vpp=2, micro_batch=1))
    plan = cm.evaluate(layout)
    busy = plan.breakdown["compute"] + plan.breakdown["recompute"] + plan.breakdown["tp"]
    assert plan.microbatches == 2
    assert plan.breakdown["bubble"] / busy == pytest.approx(7 / 2, rel=0.02)
    one = model(gpus=8, gb=1, software=software).evaluate(layout)
    assert plan.memory[0]["activations"] == pytest.approx(2 * one.memory[0]["activations"])


def test_interleaved_bubble_is_divided_by_v():
    cm = model(gpus=4, gb=16)
    plan = cm.evaluate(Layout(pp=4, vpp=4, micro_batch=1))
    busy = plan.breakdown["compute"] + plan.breakdown["recompute"] + plan.breakdown["tp"]
    assert plan.breakdown["bubble"] / busy == pytest.approx(3 / (4 * 16), rel=0.02)
    plain = cm.evaluate(Layout(pp=4, micro_batch=1))
    assert plan.breakdown["pp"] > plain.breakdown["pp"]  # v times more transfers


def test_breakdown_sums_to_step_and_recompute_costs_time():
    cm = model(gpus=32, gb=64)
    none = cm.evaluate(Layout(tp=8, sp=False, pp=2, dp=2, micro_batch=1, recompute="none"))
    full = cm.evaluate(Layout(tp=8, sp=False, pp=2, dp=2, micro_batch=1, recompute="full"))
    sel = cm.evaluate(Layout(tp=8, sp=False, pp=2, dp=2, micro_batch=1, recompute="selective"))
    for plan in (none, full, sel):
        assert sum(plan.breakdown.values()) == pytest.approx(plan.step_time)
        assert sum(plan.breakdown_percent.values()) == pytest.approx(100)
    assert none.breakdown["recompute"] == 0
    # flopwise checkpoints with use_reentrant=False, whose early stop skips the block's last GEMM (the MLP's down
    # projection) and its TP collective: the recomputed forward is the layer's forward less that GEMM
    parts = cm.layer_compute(8, False, 1)
    fwd, bwd = (sum(v[i] for v in parts.values()) for i in (0, 1))
    down = cm.gemm_time(CFG.seq_len, CFG.ffn / 8, CFG.hidden)
    assert full.breakdown["recompute"] / full.breakdown["compute"] == pytest.approx((fwd - down) / (fwd + bwd),
                                                                                   rel=0.03)
    assert full.breakdown["tp"] == pytest.approx(1.25 * none.breakdown["tp"], rel=0.02)
    # reentrant checkpointing (Megatron) repeats the whole forward: a third more matmul work, both collectives
    reentrant = model(gpus=32, gb=64, software="megatron")
    rnone = reentrant.evaluate(Layout(tp=8, sp=False, pp=2, dp=2, micro_batch=1, recompute="none"))
    rfull = reentrant.evaluate(Layout(tp=8, sp=False, pp=2, dp=2, micro_batch=1, recompute="full"))
    assert rfull.breakdown["recompute"] / rfull.breakdown["compute"] == pytest.approx(1 / 3, rel=0.15)
    assert rfull.breakdown["tp"] == pytest.approx(1.5 * rnone.breakdown["tp"], rel=0.02)
    # ... and so less than a whole forward of flopwise's own layer
    assert full.breakdown["recompute"] / full.breakdown["compute"] < 0.9 * fwd / (fwd + bwd)
    assert 0 < sel.breakdown["recompute"] < 0.1 * full.breakdown["recompute"]
    assert none.step_time < sel.step_time < full.step_time
    assert none.peak_memory == sel.peak_memory > full.peak_memory  # flash keeps no s^2 tensors to drop
    unfused = model(gpus=32, gb=64, software="megatron")
    mem = {
        rc: unfused.evaluate(Layout(tp=8, sp=False, pp=2, dp=2, recompute=rc)).peak_memory
        for rc in ("none", "selective")
    }
    assert mem["none"] > mem["selective"]


def test_ring_collectives():
    assert ring_time("all_reduce", 1e9, 8, 100e9) == pytest.approx(2 * 7 / 8 * 0.01 + COLLECTIVE_LATENCY_S)
    assert ring_time("all_gather", 1e9, 4, 100e9) == pytest.approx(3 / 4 * 0.01 + COLLECTIVE_LATENCY_S)
    assert ring_time("all_reduce", 1e9, 1, 100e9) == 0.0


def test_a_reduce_scatter_over_gloo_moves_an_all_reduces_bytes():
    """NCCL's reduce-scatter moves half an all-reduce's bytes; gloo (a measured CPU) runs it as all-reduces, so the
    planner costs flopwise's sequence-parallel reduce-scatter and a ZeRO gradient reduce-scatter that way there."""
    from flopwise.hardware import Accelerator

    gpu = model(gpus=8)
    cpu = CostModel(CFG, Cluster(Accelerator("this-cpu", 1e12, 64e9, 20e9, 2e9, measured=True), 8), Training(64))
    assert (gpu.acc.collectives, cpu.acc.collectives) == ("nccl", "gloo")
    for cm in (gpu, cpu):
        assert cm.ring("all_reduce", 1e9, 8, 1e9) == ring_time("all_reduce", 1e9, 8, 1e9)
    assert gpu.ring("reduce_scatter", 1e9, 8, 1e9) == ring_time("reduce_scatter", 1e9, 8, 1e9)
    assert cpu.ring("reduce_scatter", 1e9, 8, 1e9) == ring_time("all_reduce", 1e9, 8, 1e9)
    # a whole plan: the same machine, its collectives over NCCL or gloo, differs only in the TP and DP traffic
    nccl = CostModel(CFG, Cluster(Accelerator("this-cpu", 1e12, 64e9, 20e9, 2e9), 8), Training(64))
    layout = Layout(tp=2, dp=4, sp=True, micro_batch=1)
    over_gloo, over_nccl = cpu.evaluate(layout).breakdown, nccl.evaluate(layout).breakdown
    assert over_gloo["tp"] > over_nccl["tp"] > 0
    assert over_gloo["compute"] == over_nccl["compute"]


def test_a_measured_attention_rate_prices_the_attention_forward_and_backward():
    """An accelerator that carries its own attention rate (a CPU's, timed at start-up) gets its attention core at
    that rate, the backward at FLASH_BACKWARD_FLOPS x the forward with no further discount (the timing ran the
    backward); without one, the class default: FLASH_EFFICIENCY of the GEMM rate, the backward discounted."""
    from dataclasses import replace

    from flopwise.flops import causal_attention_flops
    from flopwise.hardware import Accelerator
    from flopwise.plan.cost import FLASH_EFFICIENCY

    base = Accelerator("this-cpu", 1e12, 64e9, 20e9, 2e9, measured=True, gemm_efficiency=0.8)
    training = Training(64, precision="fp32", software="flopwise")
    default = CostModel(CFG, Cluster(base, 1), training)
    timed = CostModel(CFG, Cluster(replace(base, attention_efficiency=0.25), 1), training)
    flops = causal_attention_flops(CFG.seq_len, CFG.head_dim, CFG.heads, 2)
    fwd, bwd = timed.layer_compute(1, False, 2)["attention"]
    assert fwd == pytest.approx(flops / 0.25e12) and bwd == pytest.approx(2.5 * fwd)
    fwd0, bwd0 = default.layer_compute(1, False, 2)["attention"]
    assert fwd0 == pytest.approx(flops / (0.8e12 * FLASH_EFFICIENCY))
    assert bwd0 == pytest.approx(2.5 * fwd0 / default.constants.backward_efficiency)
    # nothing else moves: the GEMMs and the memory-bound rest are the same
    for part in ("gemm", "elementwise"):
        assert timed.layer_compute(1, False, 2)[part] == default.layer_compute(1, False, 2)[part]
    # unfused attention runs as GEMMs, forward and backward: the timed fused kernel's rate says nothing about it
    unfused = Training(64, precision="fp32", software="torch-eager", attention="unfused")
    assert (CostModel(CFG, Cluster(replace(base, attention_efficiency=0.25), 1), unfused).layer_compute(1, False, 2)
            == CostModel(CFG, Cluster(base, 1), unfused).layer_compute(1, False, 2))


def test_a_cpu_pays_its_host_time_per_op_once_per_micro_batch():
    """On a measured CPU each op flopwise's model dispatches costs the accelerator's host time beside its arithmetic
    (counted: opcount.model_ops), so a step of eight one-sequence micro-batches costs 7 more micro-batches' ops than
    one of eight sequences; GPUs (whose hosts run ahead of the kernels) and other stacks' profiles pay nothing."""
    from dataclasses import replace

    from flopwise.hardware import Accelerator
    from flopwise.models.config import get_preset
    from flopwise.opcount import model_ops

    cfg = get_preset("nano")
    base = Accelerator("this-cpu", 1e11, 64e9, 20e9, 2e9, measured=True, gemm_efficiency=0.8, memory_efficiency=1.0)
    training = Training(8, precision="fp32", software="flopwise")
    ops = model_ops(cfg)
    per_microbatch = (cfg.layers * sum(ops.block) + sum(ops.rest)) * 5e-6
    for mb, m in ((8, 1), (1, 8)):
        free = CostModel(cfg, Cluster(base, 1), training).evaluate(Layout(micro_batch=mb))
        paid = CostModel(cfg, Cluster(replace(base, op_overhead_s=5e-6), 1), training).evaluate(Layout(micro_batch=mb))
        assert paid.busy_time - free.busy_time == pytest.approx(m * per_microbatch)
    # the recomputed forward dispatches its ops again
    rc = [CostModel(cfg, Cluster(acc, 1), training).evaluate(Layout(micro_batch=8, recompute="full")).busy_time
          for acc in (base, replace(base, op_overhead_s=5e-6))]
    assert rc[1] - rc[0] == pytest.approx(per_microbatch + cfg.layers * ops.block[0] * 5e-6)
    assert CostModel(cfg, Cluster(replace(base, op_overhead_s=5e-6), 1),
                     Training(8, precision="fp32", software="torch-eager")).ops is None
    # compiled blocks dispatch fused kernels, which the count does not see; the eager head and loss still pay
    compiled = CostModel(cfg, Cluster(replace(base, op_overhead_s=5e-6), 1), replace(training, compiled=True))
    assert "dispatch" not in compiled.layer_compute(1, False, 8)
    assert compiled.head_time(1, 8)[0] - CostModel(cfg, Cluster(base, 1), replace(training, compiled=True)).head_time(
        1, 8)[0] == pytest.approx(sum(ops.rest) * 5e-6)
    assert model(gpus=8).ops is None


def test_tp_across_nodes_uses_the_slow_link():
    cm = model(gpus=16, gb=16)
    assert cm.bus_bandwidth(8) > 5 * cm.bus_bandwidth(16)


def test_small_per_device_matrices_run_further_from_peak():
    cm = model()
    rate = lambda m, k, n: 2 * m * k * n / cm.gemm_time(m, k, n)  # noqa: E731
    big = rate(8192, 8192, 8192)
    assert big == pytest.approx(cm.gemm_rate)
    assert rate(8192, 8192, 32) < 0.3 * big  # skinny: memory-bound on the roofline
    assert rate(64, 4096, 4096) < 0.5 * big  # a small micro-batch: weights dominate the traffic


def test_mfu_tokens_and_cost_are_consistent():
    cfg = get_preset("yuan2-2b")
    cm = CostModel(cfg, Cluster(get_accelerator("H100-SXM"), 64), Training(384, tokens=1e11))
    plan = cm.evaluate(Layout(tp=1, pp=1, dp=64, micro_batch=2, zero=1))
    assert plan.tokens_per_s_per_gpu == pytest.approx(384 * 8192 / plan.step_time / 64)
    assert 0.2 < plan.mfu < 0.7 and plan.hfu == pytest.approx(plan.mfu)  # no recompute: HFU = MFU
    assert plan.days == pytest.approx(1e11 / (plan.tokens_per_s_per_gpu * 64) / 86400)
    assert plan.gpu_hours == pytest.approx(plan.days * 24 * 64)


def test_h100_is_faster_than_a100_for_the_same_layout():
    cfg = get_preset("yuan2-2b")
    times = {}
    for gpu in ("A100-80GB", "H100-SXM"):
        cm = CostModel(cfg, Cluster(get_accelerator(gpu), 64), Training(384))
        times[gpu] = cm.evaluate(Layout(dp=64, micro_batch=2, zero=1)).step_time
    assert 1.8 < times["A100-80GB"] / times["H100-SXM"] < 3.5


def test_sliding_window_blocks_cost_their_band_where_the_kernel_skips_the_rest():
    llama = ModelConfig(vocab_size=32000, layers=8, hidden=4096, heads=32, kv_heads=8, ffn=14336, seq_len=8192,
                        lfa=False)
    windowed = llama.replace(window=1024, global_every=2)  # half the blocks see 1024 tokens back

    def attention(cfg, software):
        return CostModel(cfg, Cluster(get_accelerator("H100-SXM"), 8), Training(8, software=software)
                         ).attention_time(1, 1)

    # the band: (8192 x 1024 - 1024^2 / 2) pairs against 8192^2 / 2 for full causal, on half the blocks
    band = (8192 * 1024 - 1024**2 / 2) / (8192**2 / 2)
    assert attention(windowed, "te") == pytest.approx(attention(llama, "te") * (0.5 + 0.5 * band))
    # flopwise's SDPA runs the window as a mask: it computes every block of the scores, twice the causal half
    assert attention(windowed, "flopwise") == pytest.approx(attention(llama, "flopwise") * (0.5 + 0.5 * 2))
