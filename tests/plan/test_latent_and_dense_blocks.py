"""The planner's latent attention (DeepSeek-V2's MLA) and an MoE model's leading dense blocks: parameters per rank,
the attention core's FLOPs, where the dense blocks sit in a pipeline, and what they leave out (experts, all-to-all)."""

import pytest

from flopwise.flops import attention_flops_per_token, param_counts
from flopwise.hardware import get_accelerator
from flopwise.layout import Layout
from flopwise.models.config import get_preset
from flopwise.plan import memory as mem
from flopwise.plan.cost import CostModel
from flopwise.plan.experts import expert_params_not_gathered
from flopwise.plan.spec import Cluster, Training

V3 = get_preset("deepseek-v3")
# yuan2-m32 (24 blocks, 32 experts) with its first two blocks dense
M32_DENSE = get_preset("yuan2-m32").replace(dense_layers=2, dense_ffn=8192)


def model(cfg, gpus=32, gb=256, gpu="H100-SXM", **kw):
    return CostModel(cfg, Cluster(get_accelerator(gpu), gpus), Training(gb, **kw))


def test_the_dense_blocks_fill_the_first_chunks_of_the_split():
    cm = model(V3)  # 3 dense blocks; chunk c of the split runs on rank c % pp
    assert cm.dense_per_rank(Layout(pp=4, vpp=2), (2,) * 8) == (2, 1, 0, 0)
    assert cm.dense_per_rank(Layout(pp=2), (1, 60)) == (1, 2)
    assert cm.dense_per_rank(Layout(), (61,)) == (3,)


def test_one_stage_holds_the_model_card_parameters_dense_blocks_included():
    cm = model(M32_DENSE, software="te")
    assert cm.stage_params(Layout(), 0, M32_DENSE.layers, M32_DENSE.dense_layers) == param_counts(M32_DENSE).total
    # a dense block holds one SwiGLU of 8192 where an MoE one holds 32 experts and the router
    moe_block, dense_block = cm.layer_params.per_rank(1), cm.dense.layer_params.per_rank(1)
    assert moe_block - dense_block == 3 * 2048 * 8192 * 31 + 2048 * 3 * 32


def test_dense_blocks_send_nothing_over_the_all_to_all():
    layout = Layout(dp=32, ep=8)
    plain = model(M32_DENSE.replace(dense_layers=0, dense_ffn=0)).evaluate(layout)
    dense = model(M32_DENSE).evaluate(layout)
    assert dense.breakdown["ep"] == pytest.approx(plain.breakdown["ep"] * 22 / 24)
    assert dense.step_time < plain.step_time


def test_latent_attention_scores_over_the_rotated_dims_and_keeps_its_down_projections_whole():
    # QK^T over 128 + 64 dims per head, AV over 128: 2 x seq x heads x (192 + 128) per layer and token
    assert attention_flops_per_token(V3) == 2.0 * V3.layers * V3.seq_len * 128 * (192 + 128)
    params = mem.layer_params(V3)
    # the query and key-value down projections and their latent norms, whole on every TP rank, beside the two block
    # norms and the router
    down = 7168 * 1536 + 7168 * (512 + 64) + 1536 + 512
    assert params.replicated == down + 2 * 7168 + 7168 * 256
    # the up projections and the output projection cut by heads
    attention_cut = 1536 * 128 * 192 + 512 * 128 * 256 + 128 * 128 * 7168
    experts = 3 * 256 * 7168 * 2048 + 3 * 7168 * 2048
    assert params.sharded == attention_cut + experts


def test_a_padding_stack_keeps_the_padded_attention_output(monkeypatch):
    """flopwise's trainer pads the values to the keys' width for a fused kernel: it keeps the padded values and the
    kernel's padded output beside the output projection's input; Transformer Engine's kernel takes the unequal dims."""
    import dataclasses

    from flopwise.plan import spec

    layout, training = Layout(micro_batch=1), Training(8, software="te")
    te = mem.layer_activation_bytes(V3, training, layout)
    monkeypatch.setitem(spec.SOFTWARE, "te", dataclasses.replace(spec.SOFTWARE["te"], pads_latent_values=True))
    spec._profile.cache_clear()  # (profiles are cached by name)
    try:
        padded = mem.layer_activation_bytes(V3, training, layout)
    finally:
        monkeypatch.undo()
        spec._profile.cache_clear()
    assert padded - te == V3.seq_len * (128 * 64 + 128 * 192) * 2  # values' 64 more dims, the 192-wide output, bf16


def test_the_reduced_stage_counts_only_its_own_blocks_experts():
    """With wide dense blocks on stage 0, that stage holds the most parameters and no MoE block: none of what its
    gradients reduce over all of dp is taken for experts (reduced over ep_dp alone)."""
    cfg = M32_DENSE.replace(dense_ffn=400000)
    cm = model(cfg, software="te")
    layout = Layout(pp=2, dp=16, ep=16, split=(2, 22))
    plan = cm.evaluate(layout)
    lc = cm.layer_cost(1, False, 1, "none")
    local = cm.stage_params(layout, 0, 2, 2)
    assert local > cm.stage_params(layout, 1, 22)
    m = plan.microbatches
    assert plan.breakdown["dp"] == pytest.approx(cm.dp_time(layout, lc, 22, local, m, moe_layers=0))
    assert plan.breakdown["dp"] > cm.dp_time(layout, lc, 22, local, m, moe_layers=22)


def test_zero3_holds_the_larger_of_the_gathered_blocks():
    cfg = M32_DENSE.replace(dense_ffn=400000)
    cm = model(cfg, software="te")
    layout = Layout(dp=32, ep=8, zero=3)
    with_dense = cm.stage_memory(layout, 0, cfg.layers, 1, cfg.dense_layers)["other"]
    without = cm.stage_memory(layout, 0, cfg.layers, 1)["other"]
    assert with_dense - without == pytest.approx(2 * 2 * (cm.dense.layer_params.per_rank(1) - (
        cm.layer_params.per_rank(1) - expert_params_not_gathered(cfg, layout))))


def test_tensor_parallelism_must_divide_the_dense_blocks_width():
    from flopwise.errors import LayoutError
    from flopwise.layout import check

    with pytest.raises(LayoutError, match=r"must divide the leading dense blocks' width \(dense_ffn = 8190\)"):
        check(Layout(tp=4, dp=2), M32_DENSE.replace(dense_ffn=8190), 64)


def test_the_balanced_split_gives_the_first_stage_more_of_the_cheaper_dense_blocks():
    from flopwise.plan.search import balanced_split

    cfg = get_preset("yuan2-m32").replace(dense_layers=4, dense_ffn=2048)  # dense blocks far cheaper than MoE ones
    cm = model(cfg, gpus=32, software="te")
    layout = Layout(pp=4, dp=8, ep=8, micro_batch=1)
    m = cm.check(layout)
    split = balanced_split(cm, layout, m, require_fit=False)
    assert sum(split) == cfg.layers and split[0] > max(split[1:])
    assert cm.evaluate(layout, split).step_time < cm.evaluate(layout, (6, 6, 6, 6)).step_time


def test_an_overlapped_all_to_all_with_leading_dense_blocks_is_costed():
    """The dense twin carries no all-to-all to overlap: it is built without the flag, not refused for it."""
    layout = Layout(dp=32, ep=8)
    plain = model(M32_DENSE, software="te").evaluate(layout)
    overlapped = model(M32_DENSE, software="te", a2a_overlap=True).evaluate(layout)
    assert overlapped.breakdown["ep"] < plain.breakdown["ep"]
