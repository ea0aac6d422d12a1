"""Issue 14's additions to the cost model: FP8, context parallelism, FSDP overlap per layer, HSDP, stack
profiles, network defaults, stragglers, and fitting the cost model's own constants."""

import dataclasses
import math

import pytest

from flopwise.errors import ConfigError, LayoutError, PlanError
from flopwise.hardware import GB, get_accelerator
from flopwise.layout import Layout
from flopwise.models.config import ModelConfig
from flopwise.plan import memory as mem
from flopwise.plan.calibrate import Observation, fit
from flopwise.plan.cost import ELEMENTWISE_FWD_PASSES, FP8_FUSED_CAST_BYTES, FP8_MAMF_RATIO, Constants, CostModel
from flopwise.plan.spec import GEMM_FORMATS, SOFTWARE, Cluster, Training

H100 = get_accelerator("H100-SXM")
A100 = get_accelerator("A100-80GB")
# Llama-3-8B's shape with fewer layers: GQA, SwiGLU, a large vocabulary
LLAMA = ModelConfig(vocab_size=128256, layers=8, hidden=4096, heads=32, kv_heads=8, ffn=14336, seq_len=8192,
                    lfa=False, mlp="swiglu")


def cost(gpus=8, gb=32, acc=H100, constants=None, inter=None, **training):
    training.setdefault("software", "te")
    return CostModel(LLAMA, Cluster(acc, gpus, inter_node_bw=inter), Training(gb, **training), constants)


def cast_bytes_over_fp8(low, fp8, tp, sp):
    """(forward bytes a low-precision format's casts move beyond per-tensor FP8's in one layer, the elements they
    cast). Each distinct GEMM input is cast once forward (QKV's and gate/up's input h, wo's q / tp, w_down's ffn / tp);
    under sequence parallelism the column-parallel inputs are cast on the rank's 1/tp of the sequence. The forward's
    passes over the kept activations, which shrink with the element bytes, are taken out."""
    tokens, h, q, ffn = LLAMA.seq_len, LLAMA.hidden, LLAMA.heads * LLAMA.head_dim, LLAMA.ffn
    column = 2 * h / tp if sp and tp > 1 else 2 * h
    moved = (low.layer_compute(tp, sp, 1)["elementwise"][0] - fp8.layer_compute(tp, sp, 1)["elementwise"][0])
    kept = low._kept_activations(tp, sp, 1, 1) - fp8._kept_activations(tp, sp, 1, 1)
    passes = low.elementwise_factor(tp) * ELEMENTWISE_FWD_PASSES * kept
    return moved * low.hbm_rate - passes, tokens * (column + q / tp + ffn / tp)


def cast_elements(tp):
    """(forward cast elements, backward cast elements, block weight elements) of one layer on one of tp ranks, no SP:
    QKV's and gate/up's input h, wo's and w_down's shard forward; each GEMM's output gradient backward."""
    tokens, h, q, ffn = LLAMA.seq_len, LLAMA.hidden, LLAMA.heads * LLAMA.head_dim, LLAMA.ffn
    kv = LLAMA.kv_heads * LLAMA.head_dim
    return (tokens * (2 * h + q / tp + ffn / tp), tokens * ((q + 2 * kv) / tp + h + 2 * ffn / tp + h),
            (h * (q + 2 * kv) + q * h + 3 * h * ffn) / tp)


def test_fp8_speeds_up_the_gemms_not_the_rest():
    layout = Layout(dp=8, zero=1, micro_batch=1)
    bf16, fp8 = cost().evaluate(layout), cost(precision="fp8").evaluate(layout)
    speedup = bf16.step_time / fp8.step_time
    assert 1.15 < speedup < 1.8  # published BF16 -> FP8 speedups on H100: 1.32-1.62x (FINDINGS.md 3.6)
    assert fp8.mfu > bf16.mfu  # MFU stays relative to the bf16 peak
    with pytest.raises(PlanError, match="FP8"):
        cost(acc=A100, precision="fp8")


def test_a_memory_bound_low_precision_gemm_reads_its_block_scales():
    b200 = get_accelerator("B200")
    nv = cost(acc=b200, precision="nvfp4")
    m, k, n = 16, 4096, 4096  # a few rows: the bytes, not the FLOPs, set the time
    stored = GEMM_FORMATS["nvfp4"].stored_bytes
    assert nv.gemm_time(m, k, n, low=True) == pytest.approx((stored * (m * k + k * n) + 2 * m * n) / nv.hbm_rate,
                                                            rel=1e-9)


def test_mxfp8_is_fp8_at_the_same_rate_plus_its_block_scales_and_needs_blackwell():
    b200 = get_accelerator("B200")
    layout = Layout(dp=8, zero=1, micro_batch=1)
    fp8, mx = (cost(acc=b200, precision=p) for p in ("fp8", "mxfp8"))
    f, m = fp8.layer_compute(1, False, 1), mx.layer_compute(1, False, 1)
    assert m["gemm"] == f["gemm"] and m["attention"] == f["attention"]  # the FP8 rate, bf16 attention
    # the casts write a scale byte per 32 elements for each of two copies: 2/32 more on 4 (or 2 fused) bytes
    assert f["elementwise"][1] < m["elementwise"][1] < 1.05 * f["elementwise"][1]
    # exactly, at TP 4 with and without sequence parallelism
    for sp in (False, True):
        extra, elements = cast_bytes_over_fp8(mx, fp8, 4, sp)
        assert extra == pytest.approx(2 * GEMM_FORMATS["mxfp8"].scale_bytes * elements, rel=1e-9)
    assert fp8.evaluate(layout).step_time < mx.evaluate(layout).step_time < 1.02 * fp8.evaluate(layout).step_time
    # the kept GEMM inputs carry their scales: a byte per 32 elements more than FP8's
    tokens, h, q, ffn = LLAMA.seq_len, LLAMA.hidden, LLAMA.heads * LLAMA.head_dim, LLAMA.ffn
    more = mem.layer_activation_bytes(LLAMA, mx.training, layout) - mem.layer_activation_bytes(LLAMA, fp8.training,
                                                                                               layout)
    assert more == pytest.approx(tokens * (2 * h + q + ffn) / 32, rel=1e-9)
    with pytest.raises(PlanError, match="MXFP8.*B200, GB200, B300, GB300, MI350X, MI355X; an accelerator file declares"):
        cost(precision="mxfp8")  # Hopper: per-tensor scales only
    # a part outside the catalogue that declares block-scaled tensor cores is costed as the B200 would be
    b300 = dataclasses.replace(H100, name="B300", fp8_peak_flops=b200.fp8_peak_flops, block_scaled_fp8=True)
    assert cost(acc=b300, precision="mxfp8").evaluate(layout).step_time > 0
    with pytest.raises(PlanError, match="FP8 tensor cores"):
        cost(acc=A100, precision="mxfp8")


def test_nvfp4_runs_the_block_gemms_at_the_fp4_rate_with_half_byte_casts_and_needs_fp4_tensor_cores():
    b200 = get_accelerator("B200")
    layout = Layout(dp=8, zero=1, micro_batch=1)
    fp8, nv = (cost(acc=b200, precision=p) for p in ("fp8", "nvfp4"))
    assert nv.low_rate == pytest.approx(2 * fp8.low_rate)  # B200: 9000 against 4500 TFLOP/s dense
    f, n = fp8.layer_compute(1, False, 1), nv.layer_compute(1, False, 1)
    assert n["gemm"][0] == pytest.approx(f["gemm"][0] / 2, rel=0.02)  # the 8B's GEMMs are compute-bound
    assert n["attention"] == f["attention"]  # attention stays bf16
    # casts: two half-byte copies and one E4M3 scale byte per 16 elements each, against FP8's two 1-byte copies,
    # after an amax pass over the bf16 input for the per-tensor scale
    nvfp4 = GEMM_FORMATS["nvfp4"]
    per = 2 * (nvfp4.element_bytes + nvfp4.scale_bytes) - 2 + 2
    assert nvfp4.stored_bytes == 0.5 + 1 / 16
    for sp in (False, True):
        extra, elements = cast_bytes_over_fp8(nv, fp8, 4, sp)
        assert extra == pytest.approx(per * elements, rel=1e-9)
    # the kept GEMM inputs (QKV's and the MLP's input h each, wo's q, w_down's ffn) are half-byte casts with a scale
    # byte per 16 elements, not 1-byte ones
    tokens, h, q, ffn = LLAMA.seq_len, LLAMA.hidden, LLAMA.heads * LLAMA.head_dim, LLAMA.ffn
    fewer = mem.layer_activation_bytes(LLAMA, fp8.training, layout) - mem.layer_activation_bytes(LLAMA, nv.training,
                                                                                                 layout)
    assert fewer == pytest.approx(tokens * (2 * h + q + ffn) * (1 - 0.5 - 1 / 16), rel=1e-9)
    # the forward's two SP all-gathers per layer move half a byte and a scale byte per 16 elements, not one (a stack
    # without TE's comm-GEMM overlap, whose faster FP4 GEMMs would hide less)
    tp = 4
    fp8_lc, nv_lc = (cost(acc=b200, precision=p, software="megatron-lm").layer_cost(tp, True, 1, "none")
                     for p in ("fp8", "nvfp4"))
    bw = fp8.bus_bandwidth(tp, tp)
    gathered = tokens * h * 2  # the bf16 tensor's bytes
    saved = 2 * (tp - 1) / tp * gathered * (1 - 0.5 - 1 / 16) / 2 / bw
    assert fp8_lc.tp - nv_lc.tp == pytest.approx(saved, rel=1e-9)
    assert nv.evaluate(layout).step_time < fp8.evaluate(layout).step_time
    for acc in (H100, A100):
        with pytest.raises(PlanError, match="no FP4 tensor cores"):
            cost(acc=acc, precision="nvfp4")
    # a part outside the catalogue declares its FP4 rate in its accelerator file
    b300 = dataclasses.replace(H100, name="B300", fp8_peak_flops=b200.fp8_peak_flops, fp4_peak_flops=15000e12)
    assert cost(acc=b300, precision="nvfp4").low_rate > nv.low_rate


def test_mxfp4_is_fp4_with_mx_scales_and_runs_where_the_tensor_cores_take_them():
    """The OCP 4-bit format: the FP4 rate, half-byte values with an E8M0 scale per 32 elements, no per-tensor amax
    pass; on Blackwell beside NVFP4, on AMD's CDNA 4 in its place."""
    b200, mi355x = get_accelerator("B200"), get_accelerator("MI355X")
    nv, mx = (cost(acc=b200, precision=p) for p in ("nvfp4", "mxfp4"))
    assert mx.low_rate == nv.low_rate  # one FP4 tensor-core rate
    mxfp4 = GEMM_FORMATS["mxfp4"]
    assert mxfp4.stored_bytes == 0.5 + 1 / 32 and not mxfp4.global_amax
    for sp in (False, True):  # a cast: two half-byte copies with a scale byte per 32, no amax read first
        extra, elements = cast_bytes_over_fp8(mx, cost(acc=b200, precision="fp8"), 4, sp)
        assert extra == pytest.approx((2 * mxfp4.stored_bytes - 2) * elements, rel=1e-9)
    layout = Layout(dp=8, zero=1, micro_batch=1)
    assert mx.evaluate(layout).step_time < nv.evaluate(layout).step_time  # fewer scale bytes, no amax
    on_amd = cost(acc=mi355x, precision="mxfp4")
    assert on_amd.low_rate == pytest.approx(mi355x.fp4_peak_flops * mi355x.gemm_efficiency * FP8_MAMF_RATIO)
    assert on_amd.evaluate(layout).step_time < cost(acc=mi355x, precision="fp8").evaluate(layout).step_time
    with pytest.raises(PlanError, match="take the OCP MX formats, not NVIDIA's NVFP4: use precision mxfp4"):
        cost(acc=mi355x, precision="nvfp4")
    for acc in (H100, get_accelerator("MI300X")):
        with pytest.raises(PlanError, match="no FP4 tensor cores"):
            cost(acc=acc, precision="mxfp4")
    without_mx = dataclasses.replace(b200, name="fp4-no-mx", block_scaled_fp8=False)  # NVFP4's FP4, no MX scales
    with pytest.raises(PlanError, match=r"no block-scaled \(MXFP4\) tensor cores.*use precision nvfp4$"):
        cost(acc=without_mx, precision="mxfp4")
    fp8_only_mx = dataclasses.replace(b200, name="mx-no-fp4", fp4_peak_flops=0.0)  # the refusal offers what runs
    with pytest.raises(PlanError, match="no FP4 tensor cores.*use precision fp8 or mxfp8$"):
        cost(acc=fp8_only_mx, precision="mxfp4")


def test_fp8_rowwise_is_fp8_at_the_same_rate_plus_a_transposed_copy_per_cast_and_its_weights_cast_each_microbatch():
    layout = Layout(dp=8, zero=3, micro_batch=1)
    fp8, rw = (cost(precision=p, software="torch-compile") for p in ("fp8", "fp8-rowwise"))
    f, r = fp8.layer_compute(4, False, 1), rw.layer_compute(4, False, 1)
    assert r["gemm"] == f["gemm"] and r["attention"] == f["attention"]  # tensorwise FP8's rate, bf16 attention
    # every cast, forward and backward, writes a bf16 transposed copy for the column-wise scales and reads it back:
    # 2 x 2 bytes per cast element beyond per-tensor FP8's
    tokens, h = LLAMA.seq_len, LLAMA.hidden
    forward_elements, backward_elements, weights = cast_elements(4)  # weights: cast on every micro-batch
    # ... by both recipes (torchao): rowwise reads 2 and writes 1 forward, and backward also writes and reads back a
    # transposed bf16 copy (3, 7 bytes); tensorwise reads the weight once more for its amax each time (5, 5)
    fwd_bytes = 4 * forward_elements + (3 - 5) * weights
    bwd_bytes = 4 * backward_elements + (7 - 5) * weights
    assert (r["elementwise"][0] - f["elementwise"][0]) * rw.hbm_rate == pytest.approx(fwd_bytes, rel=1e-9)
    assert (r["elementwise"][1] - f["elementwise"][1]) * rw.hbm_rate == pytest.approx(bwd_bytes, rel=1e-9)
    # slower than tensorwise, still faster than bf16 on the 8B's shapes, and refused without FP8 tensor cores
    bf16 = cost(software="torch-compile").evaluate(layout).step_time
    assert fp8.evaluate(layout).step_time < rw.evaluate(layout).step_time < bf16
    with pytest.raises(PlanError, match="FP8"):
        cost(acc=A100, precision="fp8-rowwise")
    # under sequence parallelism torchtitan runs the recipe with plain TP: every rank casts the whole gathered
    # sequence, and the forward's all-gathers move bf16 (tensorwise FP8 casts its 1/tp shard and gathers FP8)
    r_sp, f_sp = rw.layer_compute(4, True, 1), fp8.layer_compute(4, True, 1)
    casts_sp = (r_sp["elementwise"][0] - f_sp["elementwise"][0]) * rw.hbm_rate
    shard_saving = FP8_FUSED_CAST_BYTES * 2 * tokens * h * (1 - 1 / 4)  # what tensorwise saves on QKV's and MLP's input
    assert casts_sp == pytest.approx(fwd_bytes + shard_saving, rel=1e-9)
    bf16_tp = cost(software="torch-compile").layer_cost(4, True, 1, "none").tp
    assert rw.layer_cost(4, True, 1, "none").tp == pytest.approx(bf16_tp, rel=1e-12)
    assert fp8.layer_cost(4, True, 1, "none").tp < bf16_tp
    # Transformer Engine has no rowwise recipe; torchao's Float8Linear is costed for dense models only
    for software in ("te", "flopwise"):
        with pytest.raises(PlanError, match=f"the `{software}` profile's FP8 layers are Transformer Engine's"):
            cost(precision="fp8-rowwise", software=software)
    moe = dataclasses.replace(LLAMA, experts=8, top_k=2)
    with pytest.raises(PlanError, match="dense models"):
        CostModel(moe, Cluster(H100, 8), Training(32, precision="fp8-rowwise", software="torch-compile"))


def test_fp8_rowwise_gw_hp_runs_the_weight_gradient_gemm_in_bf16_and_casts_one_copy_without_a_transposed_one():
    """torchao's rowwise_with_gw_hp (Float8LinearConfig.from_recipe_name; roofline_utils.py): the forward and input-
    gradient GEMMs as fp8-rowwise's, the weight-gradient GEMM at bf16's rate; each activation and output gradient cast
    once (no column-wise copy, no transposed bf16 copy), the weight cast 3 + 3 bytes."""
    layout = Layout(dp=8, zero=3, micro_batch=1)
    rw, gw, bf = (cost(precision=p, software="torch-compile") for p in ("fp8-rowwise", "fp8-rowwise-gw-hp", "bf16"))
    r, g, b = (c.layer_compute(4, False, 1) for c in (rw, gw, bf))
    eff = gw.constants.backward_efficiency
    assert g["gemm"][0] == r["gemm"][0] and g["attention"] == r["attention"]
    assert g["gemm"][1] == pytest.approx((r["gemm"][0] + b["gemm"][0]) / eff, rel=1e-12)
    assert r["gemm"][1] < g["gemm"][1] < b["gemm"][1]
    # against fp8-rowwise: one 1-byte copy fewer and no 2 x 2-byte transposed copy per cast element (5 bytes), and the
    # backward's weight cast without its transposed copy (7 -> 3 bytes)
    forward_elements, backward_elements, weights = cast_elements(4)
    assert (r["elementwise"][0] - g["elementwise"][0]) * gw.hbm_rate == pytest.approx(5 * forward_elements, rel=1e-9)
    assert (r["elementwise"][1] - g["elementwise"][1]) * gw.hbm_rate == pytest.approx(
        5 * backward_elements + 4 * weights, rel=1e-9)
    assert gw.evaluate(layout).step_time < bf.evaluate(layout).step_time
    # torchtitan's plain TP for both row-wise recipes: bf16 gathers under sequence parallelism, and every rank casts the
    # whole gathered sequence, so SP changes the casts' bytes by no more than fp8-rowwise's do
    assert gw.layer_cost(4, True, 1, "none").tp == pytest.approx(bf.layer_cost(4, True, 1, "none").tp, rel=1e-12)
    g_sp, r_sp = gw.layer_compute(4, True, 1), rw.layer_compute(4, True, 1)
    assert (r_sp["elementwise"][0] - g_sp["elementwise"][0]) * gw.hbm_rate == pytest.approx(5 * forward_elements,
                                                                                          rel=1e-9)
    # a recipe of torchao's, for dense models on parts with FP8 tensor cores, as fp8-rowwise
    with pytest.raises(PlanError, match="the `te` profile's FP8 layers are Transformer Engine's"):
        cost(precision="fp8-rowwise-gw-hp", software="te")
    with pytest.raises(PlanError, match="FP8"):
        cost(acc=A100, precision="fp8-rowwise-gw-hp", software="torch-compile")
    with pytest.raises(ConfigError, match="fp8_all_gather"):
        Training(32, precision="fp8-rowwise-gw-hp", software="torch-compile", fp8_all_gather=True)


@pytest.mark.parametrize("precision, gpu, per_microbatch", [
    ("fp8", "H100-SXM", (5.0, 5.0)),  # amax read 2, read 2, write 1; the backward again (torchao cannot reuse the amax)
    ("fp8-rowwise", "H100-SXM", (3.0, 7.0)),  # the amax in the cast kernel; backward: a transposed bf16 copy too
    ("fp8-rowwise-gw-hp", "H100-SXM", (3.0, 3.0)),  # backward: per tensor, its scale from the forward's row scales
    ("mxfp8", "B200", (3.0 + 1 / 32, 3.0 + 1 / 32)),  # block scales from the block, written beside the values
])
def test_torchao_casts_each_gathered_weight_on_every_microbatch_transformer_engine_does_not(
        precision, gpu, per_microbatch):
    tp = 2
    h, q, kv, ffn = LLAMA.hidden, LLAMA.heads * LLAMA.head_dim, LLAMA.kv_heads * LLAMA.head_dim, LLAMA.ffn
    weights = (h * (q + 2 * kv) + q * h + 3 * h * ffn) / tp  # this rank's block weights
    acc = get_accelerator(gpu)

    def per_microbatch_fixed(cm):  # the bytes of a micro-batch's elementwise work that do not grow with its tokens
        one, two = (cm.layer_compute(tp, False, mb)["elementwise"] for mb in (1, 2))
        return tuple((2 * one[i] - two[i]) * cm.hbm_rate for i in (0, 1))

    assert per_microbatch_fixed(cost(acc=acc, precision=precision, software="torch-compile")) == pytest.approx(
        tuple(b * weights for b in per_microbatch), rel=1e-6)
    if not precision.startswith("fp8-rowwise"):  # Transformer Engine keeps a step's FP8 weights across micro-batches
        assert per_microbatch_fixed(cost(acc=acc, precision=precision, software="te")) == pytest.approx(
            (0.0, 0.0), abs=1e-6 * weights)


def test_torchao_weight_casts_leave_out_moe_experts_grouped_gemms():
    moe = dataclasses.replace(LLAMA, experts=8, top_k=2)
    cm = CostModel(moe, Cluster(H100, 8), Training(32, precision="fp8", software="torch-compile"))
    one, two = (cm.layer_compute(2, False, mb)["elementwise"][0] for mb in (1, 2))
    dense = sum(g.count * math.prod(cm._sharded(g, 2)) for g in cm.gemms if not g.stored)  # attention, router
    assert any(g.stored for g in cm.gemms) and (2 * one - two) * cm.hbm_rate == pytest.approx(5 * dense, rel=1e-6)


def test_fp8_all_gather_moves_and_holds_fp8_weights_and_torchao_casts_the_shard_not_each_microbatch():
    layout = Layout(dp=8, zero=3, micro_batch=1)
    h, q, kv, ffn = LLAMA.hidden, LLAMA.heads * LLAMA.head_dim, LLAMA.kv_heads * LLAMA.head_dim, LLAMA.ffn
    weights = h * (q + 2 * kv) + q * h + 3 * h * ffn
    plain, gathered = (cost(precision="fp8", software="torch-compile", fp8_all_gather=g) for g in (False, True))
    p, g = plain.layer_compute(1, False, 1), gathered.layer_compute(1, False, 1)
    # forward: no cast of the gathered weight (the shard's, 1/dp of it, is left out); backward: the gathered FP8
    # weight's transposed copy, read 1 and write 1, in place of the bf16 weight's amax and cast (5 bytes)
    assert (p["elementwise"][0] - g["elementwise"][0]) * plain.hbm_rate == pytest.approx(5 * weights, rel=1e-9)
    assert (p["elementwise"][1] - g["elementwise"][1]) * plain.hbm_rate == pytest.approx(3 * weights, rel=1e-9)
    # the gathered layer and the prefetched one are held in FP8: half the bf16 buffers
    pm, gm = plain.evaluate(layout).memory[0]["other"], gathered.evaluate(layout).memory[0]["other"]
    assert pm - gm == pytest.approx(2 * plain.layer_params.per_rank(1) * (2 - 1), rel=1e-9)
    # on a network slow enough to expose the gathers, ZeRO-3's take less time
    lay = Layout(dp=16, zero=3, micro_batch=1)
    slow_plain, slow_gathered = (cost(gpus=16, inter=1 * GB, precision="fp8", software="torch-compile",
                                      fp8_all_gather=g).evaluate(lay).breakdown["dp"] for g in (False, True))
    assert 0 < slow_gathered < slow_plain
    # ZeRO-1's gather after the step (not overlapped by this profile): the blocks' weights in FP8, the embedding, head
    # and final norm in bf16
    lay = Layout(dp=8, zero=1, micro_batch=1)
    local = plain.stage_params(lay, 0, LLAMA.layers)
    blocks = LLAMA.layers * plain.layer_params.per_rank(1)
    gather = (gathered.bucketed("all_gather", blocks * 1, 8, 8)
              + gathered.bucketed("all_gather", (local - blocks) * 2, 8, 8))
    dp_plain, dp_gathered = (c.evaluate(lay).breakdown["dp"] for c in (plain, gathered))
    assert dp_plain - dp_gathered == pytest.approx(plain.bucketed("all_gather", local * 2, 8, 8) - gather, rel=1e-9)
    # torchao casts each rank's shard before every gather: ZeRO-3 in each forward and backward, ZeRO-1/2 once a step
    shard_bytes = 5 * plain.layer_params.per_rank(1) / 8  # read 2, amax read 2, write 1 per shard element
    assert gathered.shard_cast_time(layout, 4) == pytest.approx(2 * shard_bytes / plain.hbm_rate, rel=1e-12)
    assert gathered.shard_cast_time(lay, 4) == pytest.approx(shard_bytes / 4 / plain.hbm_rate, rel=1e-12)
    assert plain.shard_cast_time(layout, 4) == 0.0
    with_casts = gathered.evaluate(layout)
    monkeypatched = CostModel.shard_cast_time
    try:
        CostModel.shard_cast_time = lambda self, layout, m: 0.0
        without = gathered.evaluate(layout)
    finally:
        CostModel.shard_cast_time = monkeypatched
    assert with_casts.breakdown["compute"] - without.breakdown["compute"] == pytest.approx(
        with_casts.microbatches * LLAMA.layers * 2 * shard_bytes / plain.hbm_rate, rel=1e-9)
    # a layout that gathers no weights has nothing to gather in FP8: refused, and the search leaves it out
    with pytest.raises(LayoutError, match="fp8_all_gather is the FP8 gather of sharded weights.*set zero >= 1"):
        gathered.evaluate(Layout(dp=8, zero=0, micro_batch=1))
    one_rank = cost(gpus=8, precision="fp8", software="torch-compile", fp8_all_gather=True)
    with pytest.raises(LayoutError, match=r"tp=8,pp=1,dp=1,zero=3.*a single data-parallel rank \(dp x cp = 1\)"):
        one_rank.evaluate(Layout(tp=8, dp=1, zero=3, micro_batch=1))
    moe = dataclasses.replace(LLAMA, experts=8, top_k=2)
    with pytest.raises(PlanError, match="fp8_all_gather under torchao is costed for dense models"):
        CostModel(moe, Cluster(H100, 8), Training(32, precision="fp8", software="torch-compile", fp8_all_gather=True))
    # Megatron's --fp8-param-gather keeps the experts' weights in FP8 too: their gather under ZeRO-1 moves 1 byte each
    slow = Cluster(H100, 16, 8, None, 1e9)  # a network slow enough that the gather shows
    te_moe = CostModel(moe, slow, Training(64, precision="fp8", software="te", fp8_all_gather=True))
    te_bf16 = CostModel(moe, slow, Training(64, precision="fp8", software="te"))
    ep = Layout(dp=16, ep=4, zero=1, micro_batch=1)
    lc = te_moe.layer_cost(1, False, 1, "none")
    local = te_moe.stage_params(ep, 0, LLAMA.layers)
    assert te_moe.evaluate(ep).breakdown["dp"] < te_bf16.evaluate(ep).breakdown["dp"]
    gathered = te_moe.dp_time(ep, lc, LLAMA.layers, local, 1)
    assert gathered < te_bf16.dp_time(ep, lc, LLAMA.layers, local, 1)
    from flopwise.plan.search import search
    plans = search(LLAMA, Cluster(H100, 8), Training(32, precision="fp8", software="torch-compile",
                                                       fp8_all_gather=True), top=20).plans
    assert plans and all(plan.layout.zero >= 1 for plan in plans)
    # torchao's is per-tensor FP8's
    for precision in ("bf16", "fp8-rowwise", "mxfp8"):
        with pytest.raises(ConfigError, match="needs precision = fp8 under the 'torch-compile' profile"):
            Training(32, precision=precision, software="torch-compile", fp8_all_gather=True)
    # Megatron's --fp8-param-gather keeps Transformer Engine's MXFP8 weights too, scales and all (1 + 1/32 bytes per
    # element), and a gather a slow network exposes takes less time; no stack gathers NVFP4
    assert Training(32, precision="mxfp8", software="te", fp8_all_gather=True).gathered_weight_bytes == 1 + 1 / 32
    b200, lay = get_accelerator("B200"), Layout(dp=16, zero=3, micro_batch=1)
    exposed = [cost(acc=b200, gpus=16, inter=1 * GB, precision="mxfp8", software="te",
                    fp8_all_gather=g).evaluate(lay).breakdown["dp"] for g in (False, True)]
    assert 0 < exposed[1] < exposed[0]
    with pytest.raises(ConfigError, match="needs precision = fp8 or mxfp8 under the 'te' profile, not 'nvfp4'"):
        Training(32, precision="nvfp4", software="te", fp8_all_gather=True)


def test_torchao_stacks_keep_fp8_gemm_inputs_in_bf16_and_transformer_engine_keeps_the_casts(monkeypatch):
    # torchao's Float8Linear saves its high-precision input and weight for the backward (matmul_with_hp_or_float8_args)
    layout = Layout(dp=8, zero=3, micro_batch=1)
    tokens, h, q, ffn = LLAMA.seq_len, LLAMA.hidden, LLAMA.heads * LLAMA.head_dim, LLAMA.ffn
    one_byte_fewer = LLAMA.layers * tokens * (2 * h + q + ffn)  # QKV's and the MLP's input h, wo's q, w_down's ffn
    for software in ("torch-compile", "torch-eager"):
        bf16, fp8, rw = (cost(software=software, precision=p).evaluate(layout) for p in ("bf16", "fp8", "fp8-rowwise"))
        assert fp8.memory[0]["activations"] == pytest.approx(bf16.memory[0]["activations"], rel=1e-12)
        assert rw.memory[0]["activations"] == pytest.approx(bf16.memory[0]["activations"], rel=1e-12)
        # with Transformer Engine's saved casts the plan holds 1 byte fewer per GEMM input, and its step does not
        # cast the weights on every micro-batch
        monkeypatch.setitem(SOFTWARE, f"{software}-casts-kept",
                            dataclasses.replace(SOFTWARE[software], fp8_library="transformer-engine"))
        kept = cost(software=f"{software}-casts-kept", precision="fp8").evaluate(layout)
        assert kept.step_time < fp8.step_time
        assert fp8.memory[0]["activations"] - kept.memory[0]["activations"] == pytest.approx(one_byte_fewer, rel=1e-9)
    te_bf16, te_fp8 = (cost(precision=p).evaluate(layout) for p in ("bf16", "fp8"))
    assert te_bf16.memory[0]["activations"] - te_fp8.memory[0]["activations"] == pytest.approx(one_byte_fewer, rel=1e-9)


def test_context_parallelism_splits_the_work_and_the_activations():
    one = cost().evaluate(Layout(dp=8, zero=1, micro_batch=1))
    two = cost().evaluate(Layout(dp=4, cp=2, zero=1, micro_batch=1))
    # per rank: half the tokens of twice as many sequences, so the compute is about the same
    assert two.breakdown["compute"] == pytest.approx(one.breakdown["compute"], rel=0.1)
    assert two.memory[0]["activations"] == pytest.approx(one.memory[0]["activations"] / 2, rel=0.01)
    assert two.memory[0]["optimizer"] == pytest.approx(one.memory[0]["optimizer"], rel=0.01)  # sharded over dp x cp
    assert 0 <= two.breakdown["cp"] < 0.05 * two.step_time  # NVLink hides the KV ring behind attention
    slow = cost(gpus=16, gb=32, inter=1 * GB).evaluate(Layout(tp=8, cp=2, dp=1, zero=0, micro_batch=1))
    assert slow.breakdown["cp"] > 0  # across nodes on a slow network it no longer hides
    with pytest.raises(LayoutError, match="context parallelism is not implemented"):
        cost(software="flopwise").evaluate(Layout(dp=4, cp=2, micro_batch=1))  # flopwise's trainer cannot run it


def test_fsdp_hides_per_layer_and_degrades_smoothly_with_the_network():
    layout = Layout(dp=64, zero=3, micro_batch=1)

    def dp_share(gbps):
        plan = cost(gpus=64, gb=64, inter=gbps * GB, software="torch-compile").evaluate(layout)
        return plan.breakdown["dp"] / plan.step_time

    shares = [dp_share(g) for g in (400, 100, 50, 25, 12.5, 6.25)]
    assert shares[0] < 0.1  # a fast network hides all but the first gather, the last reduction, the embedding
    assert all(a <= b for a, b in zip(shares, shares[1:], strict=False))  # monotone
    assert all(b - a < 0.4 for a, b in zip(shares, shares[1:], strict=False))  # no cliff from halving bandwidth
    assert shares[-1] > 0.25  # at 6.25 GB/s per GPU a quarter of the step or more waits on the network


def test_te_overlaps_tp_collectives_with_the_gemms_down_to_one_chunk():
    layout = Layout(tp=2, sp=True, dp=4, zero=1, micro_batch=1)
    exposed = cost(software="torch-compile").evaluate(layout).breakdown["tp"]  # no comm-GEMM overlap
    te = cost().evaluate(layout).breakdown["tp"]
    # over NVLink the GEMMs are longer than the collectives: one chunk in tp stays exposed (and the embedding's
    # and the loss's collectives, which border no GEMM)
    assert te == pytest.approx(exposed / 2, rel=0.05)
    # at TP 8 the 8B's per-rank GEMMs are shorter than the collectives: what they cannot cover stays exposed
    wide = Layout(tp=8, sp=True, dp=1, zero=0, micro_batch=1)
    te8, exposed8 = (cost(software=s).evaluate(wide).breakdown["tp"] for s in ("te", "torch-compile"))
    assert exposed8 / 8 < te8 < exposed8


def test_megatron_lm_defaults_expose_what_nvidia_recipes_overlap():
    """Megatron-LM launched with its defaults: the same TE kernels as NVIDIA's recipes ('te'), but the fp32 gradient
    reduction and the parameter gather wait for the backward, and TP collectives are not overlapped."""
    layout = Layout(tp=2, sp=True, dp=8, zero=1, micro_batch=1)
    te, mlm = (cost(gpus=16, gb=64, inter=12.5 * GB, software=s).evaluate(layout) for s in ("te", "megatron-lm"))
    assert mlm.breakdown["compute"] == pytest.approx(te.breakdown["compute"])  # the same kernels
    assert mlm.breakdown["tp"] > 1.5 * te.breakdown["tp"]
    assert mlm.breakdown["dp"] > te.breakdown["dp"]
    # bf16 gradients are reduced in fp32 (fp16 ones in fp16): the exposed reduction is larger under bf16
    fp16 = cost(gpus=16, gb=64, inter=12.5 * GB, software="megatron-lm", precision="fp16").evaluate(layout)
    assert mlm.breakdown["dp"] > 1.2 * fp16.breakdown["dp"]


def test_a_hugging_face_model_under_deepspeed_is_not_megatron_deepspeed():
    """'deepspeed-hf': flash attention and ZeRO-3's overlapped gathers, but eager elementwise kernels; Megatron-
    DeepSpeed's 2021-22 GPT ('deepspeed'): unfused attention, no overlap."""
    layout = Layout(dp=8, zero=3, micro_batch=1)
    hf, mds = (cost(gb=16, software=s).evaluate(layout) for s in ("deepspeed-hf", "deepspeed"))
    assert hf.breakdown["dp"] < 0.5 * mds.breakdown["dp"]
    assert hf.step_time < mds.step_time
    eager = cost(gb=16, software="torch-eager").evaluate(layout)
    assert hf.breakdown["compute"] == pytest.approx(eager.breakdown["compute"])  # the model's own PyTorch kernels
    # reduced in the training dtype: fp32 gradients move twice the bytes of bf16 ones (ZeRO-1: not overlapped)
    one = Layout(dp=16, zero=1, micro_batch=1)
    bf16, fp32 = (cost(gpus=16, gb=16, inter=12.5 * GB, software="deepspeed-hf", precision=p).evaluate(one)
                  for p in ("bf16", "fp32"))
    assert fp32.breakdown["dp"] > 1.5 * bf16.breakdown["dp"]


def test_the_runs_attention_kernel_overrides_its_profiles():
    """An eager-attention run (Hugging Face's eager attention, Megatron-LM without --use-flash-attn) keeps the s^2
    scores: more time and activation memory than its profile's flash kernel; context parallelism then refuses."""
    layout = Layout(dp=8, zero=1, micro_batch=1)
    flash = cost(gb=16, seq_len=2048).evaluate(layout)
    unfused = cost(gb=16, seq_len=2048, attention="unfused").evaluate(layout)
    assert unfused.breakdown["compute"] > flash.breakdown["compute"]
    assert unfused.memory[0]["activations"] > 1.5 * flash.memory[0]["activations"]
    stated = cost(attention="flash").training  # the profile's own kernel, stated: kept, and nothing overridden
    assert stated.attention == "flash" and stated.profile == cost().training.profile
    with pytest.raises(ConfigError, match="flopwise's trainer runs SDPA"):
        cost(software="flopwise", attention="unfused")
    with pytest.raises(ConfigError, match="attention = 'paged'"):
        cost(attention="paged")
    with pytest.raises(LayoutError, match="context parallelism needs a fused"):
        cost(attention="unfused").evaluate(Layout(dp=4, cp=2, zero=1, micro_batch=1))


def test_non_reentrant_recompute_stops_before_the_down_projection():
    layout = Layout(dp=8, zero=3, micro_batch=1, recompute="full")
    torch_rc = cost(software="torch-compile").layer_cost(1, False, 1, "full")
    deepspeed_rc = cost(software="deepspeed").layer_cost(1, False, 1, "full")
    assert deepspeed_rc.recompute == pytest.approx(deepspeed_rc.fwd)  # reentrant: the whole forward again
    m = CostModel(LLAMA, Cluster(H100, 8), Training(32, software="torch-compile"))
    down = m.gemm_time(LLAMA.seq_len, LLAMA.ffn, LLAMA.hidden)
    assert torch_rc.recompute == pytest.approx(torch_rc.fwd - down)
    plan = cost(software="torch-compile").evaluate(layout)
    assert 0 < plan.breakdown["recompute"] < 0.3 * plan.breakdown["compute"]


def test_fp8_with_sequence_parallelism_casts_and_gathers_the_local_shard():
    m8, m16 = cost(precision="fp8", software="torch-compile"), cost(software="torch-compile")
    no_sp, sp = m8.layer_cost(4, False, 1, "none"), m8.layer_cost(4, True, 1, "none")
    acts = [mem.layer_activation_bytes(LLAMA, m8.training, Layout(tp=4, sp=s, micro_batch=1), written=True)
            for s in (False, True)]
    # SP shrinks the elementwise traffic of the activations; under FP8 the casts of the QKV and MLP inputs shrink
    # by tp on top of it (each rank casts its 1/tp of the sequence before the all-gather)
    from_activations = m8.elementwise_factor(4) * ELEMENTWISE_FWD_PASSES * (acts[0] - acts[1]) / m8.hbm_rate
    casts = FP8_FUSED_CAST_BYTES * 2 * LLAMA.seq_len * LLAMA.hidden / m8.hbm_rate  # QKV's and the MLP's input
    assert no_sp.fwd - sp.fwd == pytest.approx(from_activations + casts * (1 - 1 / 4), rel=1e-6)
    # the forward's all-gathers move the FP8 copy: FP8's TP time below bf16's under SP
    assert sp.tp < m16.layer_cost(4, True, 1, "none").tp


def test_fsdp_inside_pipeline_stages_is_costed_for_other_stacks_only():
    layout = Layout(pp=2, dp=8, zero=3, micro_batch=1)
    fsdp = cost(gpus=16, gb=64, software="torch-compile", inter=5 * GB).evaluate(layout)
    zero1 = cost(gpus=16, gb=64, software="torch-compile", inter=5 * GB).evaluate(layout.replace(zero=1))
    assert fsdp.breakdown["dp"] > zero1.breakdown["dp"]  # parameters gathered again for every micro-batch
    assert fsdp.memory[0]["params"] < zero1.memory[0]["params"]  # but sharded
    with pytest.raises(LayoutError, match="shards gradients per micro-batch"):
        cost(gpus=16, gb=64, software="flopwise").evaluate(layout)  # flopwise's trainer cannot run it


def test_zero_over_a_single_data_parallel_rank_is_costed_as_no_zero_for_other_stacks():
    # DeepSpeed and Megatron accept a ZeRO stage with dp = 1 (a pure pipeline) and shard nothing; a published run
    # with it is costed as plain training, while flopwise's own trainer refuses the layout with its reason
    for zero in (1, 3):
        layout = Layout(pp=8, dp=1, zero=zero, micro_batch=1)
        costed = cost(gb=16, software="deepspeed").evaluate(layout)
        plain = cost(gb=16, software="deepspeed").evaluate(layout.replace(zero=0))
        assert costed.step_time == pytest.approx(plain.step_time)
        assert costed.layout.zero == zero  # the plan reports the run's layout (FSDP wraps the blocks all the same)
        assert costed.memory[0]["total"] == pytest.approx(plain.memory[0]["total"])
        with pytest.raises(LayoutError, match="shard group has one rank"):
            cost(gb=16, software="flopwise").evaluate(layout)
    # a shard group of one among several data-parallel ranks (dp_shard = 1) is refused for every stack: a no-op
    # ZeRO over replicas must not pass for a cheaper layout
    with pytest.raises(LayoutError, match="shard group has one rank"):
        cost(gpus=16, gb=16, software="te").evaluate(Layout(dp=16, zero=2, dp_shard=1, micro_batch=1))


def test_hsdp_reduces_across_nodes_only_a_shard():
    # a network slow enough to expose everything: per NIC, FSDP's rings over 64 ranks move (2 + 2 + 4) bytes per
    # parameter / 8 NICs (two bf16 gathers, one fp32 reduce-scatter), HSDP's all-reduce of a 1/8 fp32 shard
    # 2 x 7/8 x 4 / 8; the gathers stay on NVLink
    slow = dict(gpus=64, gb=64, inter=0.5 * GB, software="torch-compile")
    full = cost(**slow).evaluate(Layout(dp=64, zero=3))
    hsdp = cost(**slow).evaluate(Layout(dp=64, zero=3, dp_shard=8))
    assert hsdp.breakdown["dp"] < full.breakdown["dp"]
    assert hsdp.memory[0]["params"] > full.memory[0]["params"]  # sharded over 8, not 64


def test_eager_stacks_pay_for_unfused_elementwise_and_hopper_defaults_to_ndr():
    layout = Layout(dp=8, zero=3, micro_batch=1)
    eager = cost(software="torch-eager").evaluate(layout).breakdown["compute"]
    compiled = cost(software="torch-compile").evaluate(layout).breakdown["compute"]
    assert eager > compiled
    assert Cluster(H100, 16).inter_bw == 50 * GB and Cluster(A100, 16).inter_bw == 25 * GB


def test_straggler_term_grows_with_the_number_of_ranks():
    layout = Layout(tp=8, dp=1, micro_batch=1)
    c = Constants(straggler_cv=0.01)
    small = cost(gpus=8, gb=32, constants=c).evaluate(layout)
    many = CostModel(LLAMA, Cluster(H100, 1024), Training(1024, software="te"), c).evaluate(
        Layout(tp=8, dp=128, zero=1, micro_batch=1))
    ratio = many.breakdown["straggler"] / (many.step_time - many.breakdown["straggler"])
    assert ratio > small.breakdown["straggler"] / (small.step_time - small.breakdown["straggler"])
    assert 0.03 < ratio < 0.05  # 0.01 x sqrt(2 ln 1024) = 3.7%


def test_the_stacks_host_overhead_is_paid_once_per_step_whatever_its_size():
    layout = Layout(dp=8, zero=1, micro_batch=1)
    overhead = SOFTWARE["te"].step_overhead_s
    # the stacks that sync the host every step (Megatron-Core's loop and optimizer, the DeepSpeed engine) pay it; a
    # profile opts in on purpose (flopwise's own trainer: not measured so; PyTorch-native stacks keep the loss and
    # the gradient norm on the GPU between log steps)
    paying = {name for name, sw in SOFTWARE.items() if sw.step_overhead_s}
    assert paying == {"te", "megatron-lm", "deepspeed", "deepspeed-hf"} and overhead > 0
    assert {SOFTWARE[name].step_overhead_s for name in paying} == {overhead}
    short, long = cost(gb=8).evaluate(layout), cost(gb=64).evaluate(layout)  # 1 and 8 micro-batches per step
    for plan in (short, long):
        assert plan.breakdown["host"] == overhead
    assert short.breakdown["host"] / short.step_time > 4 * long.breakdown["host"] / long.step_time
    bare = cost(gb=8, step_overhead_s=0.0).evaluate(layout)
    assert bare.breakdown["host"] == 0
    # the straggler term scales the whole step, the host's part with it
    assert short.step_time - bare.step_time == pytest.approx(overhead * (1 + bare.breakdown["straggler"] / (
        bare.step_time - bare.breakdown["straggler"])))


def test_fit_recovers_a_cost_model_constant():
    truth = Constants(eager_traffic=3.0)
    obs = []
    for gpus, layout in ((8, Layout(dp=8, zero=3)), (8, Layout(tp=2, dp=4, zero=1)), (16, Layout(dp=16, zero=3))):
        cluster, training = Cluster(H100, gpus), Training(32, software="torch-eager")
        measured = CostModel(LLAMA, cluster, training, truth).evaluate(layout).step_time
        obs.append(Observation(LLAMA, cluster, training, layout, measured))
    result = fit(obs, ["eager_traffic"])
    assert result.constants["eager_traffic"] == pytest.approx(3.0, rel=0.01)
    assert result.model_constants() == dataclasses.replace(Constants(), eager_traffic=result.constants["eager_traffic"])
    assert result.accelerator() == H100  # no device constant was fitted


def test_flopwise_eager_loss_moves_the_logits_more_often(monkeypatch):
    """flopwise's trainer computes F.cross_entropy(logits.float()): 48 bytes per logit in bf16 (36 in fp32, where
    the casts are no-ops) against a fused loss's 12. Against flopwise's profile with a fused loss, the difference
    is exactly that traffic."""
    from flopwise.plan.cost import loss_bytes

    assert (loss_bytes(2, eager=False), loss_bytes(2, eager=True), loss_bytes(4, eager=True)) == (12, 48, 36)
    monkeypatch.setitem(SOFTWARE, "flopwise-fused-loss", dataclasses.replace(SOFTWARE["flopwise"], eager_loss=False))
    ours, compiled = cost(software="flopwise"), cost(software="flopwise-fused-loss")
    extra = LLAMA.seq_len * LLAMA.vocab_size * (48 - 12) / ours.hbm_rate
    assert ours.head_time(1, 1)[0] - compiled.head_time(1, 1)[0] == pytest.approx(extra, rel=1e-9)
    # vocab-parallel under TP: each rank's share of the logits
    assert ours.head_time(2, 1)[0] - compiled.head_time(2, 1)[0] == pytest.approx(extra / 2, rel=1e-9)


def test_flopwise_memory_holds_fp32_weights_their_autocast_copies_and_the_eager_losss_gradients():
    """flopwise's trainer keeps fp32 weights and gradients under autocast (4 + 4 + 8 bytes per parameter, and a bf16
    copy of the weights saved for the backward) and an eager loss whose backward holds two fp32 gradients of the
    logits; a Megatron-style stack keeps 2 + 2 + 12 and neither extra (the H200's 1B run: benchmarks/RESULTS.md)."""
    layout = Layout(micro_batch=1, sp=False)
    own, te = cost(gpus=1, gb=1, software="flopwise"), cost(gpus=1, gb=1)
    ours, theirs = own.stage_memory(layout, 0, LLAMA.layers, 1), te.stage_memory(layout, 0, LLAMA.layers, 1)
    params = own.stage_params(layout, 0, LLAMA.layers)
    logits = LLAMA.seq_len * LLAMA.vocab_size
    assert (ours["params"], ours["grads"], ours["optimizer"]) == pytest.approx((4 * params, 4 * params, 8 * params))
    assert (theirs["params"], theirs["grads"], theirs["optimizer"]) == pytest.approx((2 * params, 2 * params,
                                                                                      12 * params))
    assert ours["weight_copies"] == pytest.approx(2 * params) and theirs["weight_copies"] == 0
    assert ours["loss_backward"] == pytest.approx(8 * logits) and theirs["loss_backward"] == 0
    assert ours["total"] == pytest.approx(sum(v for k, v in ours.items() if k != "total"))  # both counted in the peak
    # the printed tables show every part in exactly one column, so their columns add up to the total
    shown = [part for col, parts in mem.PRINTED_PARTS.items() if col != "total" for part in parts]
    assert sorted(shown) == sorted(k for k in ours if k != "total")
    # fp32 training (the CPU trainer) has no autocast copies; its eager loss still holds the two gradients
    fp32 = cost(gpus=1, gb=1, software="flopwise", precision="fp32").stage_memory(layout, 0, LLAMA.layers, 1)
    assert fp32["weight_copies"] == 0 and fp32["loss_backward"] == pytest.approx(8 * logits)


def test_flopwise_profile_is_its_measured_kernels():
    """flopwise's trainer runs one PyTorch kernel per elementwise op, FLOPWISE_EAGER_TRAFFIC times the planner's
    passes as profiled; train.compile = true fuses them (FLOPWISE_COMPILED_TRAFFIC); on Hopper its SDPA is cuDNN's
    fused attention, costed as the FA3 class (Transformer Engine's)."""
    from flopwise.plan.spec import FLOPWISE_COMPILED_TRAFFIC, FLOPWISE_EAGER_TRAFFIC

    eager, compiled = cost(software="flopwise"), cost(software="flopwise", compiled=True)
    te = cost(software="te")
    assert eager.ew_factor == FLOPWISE_EAGER_TRAFFIC and compiled.ew_factor == FLOPWISE_COMPILED_TRAFFIC
    e, c = eager.layer_compute(1, False, 1), compiled.layer_compute(1, False, 1)
    assert e["gemm"] == c["gemm"] and e["attention"] == c["attention"] == te.layer_compute(1, False, 1)["attention"]
    for i in (0, 1):
        assert e["elementwise"][i] / c["elementwise"][i] == pytest.approx(
            FLOPWISE_EAGER_TRAFFIC / FLOPWISE_COMPILED_TRAFFIC, rel=1e-9)
    layout = Layout(dp=8, micro_batch=1, sp=False)
    assert compiled.evaluate(layout).step_time < eager.evaluate(layout).step_time
    # only the blocks compile: the final norm before the head is costed as eager either way
    assert compiled.head_ew_factor == eager.head_ew_factor == FLOPWISE_EAGER_TRAFFIC
    assert compiled.head_time(1, 1) == eager.head_time(1, 1)
    # the layer's time is the sum of its kinds
    lc = eager.layer_cost(1, False, 1, "none")
    assert lc.fwd + lc.bwd == pytest.approx(sum(a + b for a, b in e.values()), rel=1e-12)
    with pytest.raises(ConfigError, match="compiled applies to flopwise"):
        Training(32, software="torch-compile", compiled=True)


def test_compiled_pytorch_tp_is_costed_with_eager_elementwise_traffic():
    """torch.compile's fused elementwise work stops at PyTorch-native TP's collectives (Software.unfused_across_tp):
    with tp > 1 a torch-compile row's norms, activations and residuals move the eager stack's traffic; at tp = 1 the
    fused traffic; Transformer Engine's fused kernels are fused at any tp."""
    compiled, eager, te = (cost(software=s) for s in ("torch-compile", "torch-eager", "te"))
    assert compiled.elementwise_factor(1) == 1.0 and te.elementwise_factor(4) == 1.0
    assert compiled.elementwise_factor(4) == eager.elementwise_factor(4) == compiled.constants.eager_traffic > 1.0
    tp1 = compiled.layer_compute(1, False, 1)["elementwise"][0]
    tp4 = compiled.layer_compute(4, True, 1)["elementwise"][0]
    assert tp4 == pytest.approx(eager.layer_compute(4, True, 1)["elementwise"][0])
    assert tp4 > tp1 / 4  # more than the 1/tp share of the single-rank work
    # selective recomputation re-runs the same elementwise kernels: at the eager rate too
    assert compiled.layer_cost(4, True, 1, "selective").recompute == pytest.approx(
        eager.layer_cost(4, True, 1, "selective").recompute)


def test_a_measured_host_time_replaces_the_profiles_and_bad_values_are_refused():
    layout = Layout(dp=8, zero=1, micro_batch=1)
    assert cost(gb=8, step_overhead_s=0.012).evaluate(layout).breakdown["host"] == 0.012
    assert cost(gb=8, software="torch-compile", step_overhead_s=0.03).evaluate(layout).breakdown["host"] == 0.03
    assert cost(gb=8, software="torch-compile").evaluate(layout).breakdown["host"] == 0
    for bad in (-0.01, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="step_overhead_s"):
            Training(8, software="te", step_overhead_s=bad)
