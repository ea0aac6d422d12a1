import pytest

from flopwise.flops import (
    count_parameters_meta,
    hardware_flops_per_token,
    mfu,
    model_flops_per_token,
    param_counts,
    recompute_flops_per_token,
)
from flopwise.models import get_preset
from flopwise.models.config import ModelConfig


@pytest.mark.parametrize(("preset", "published"), [("yuan2-2b", 2.09e9), ("yuan2-51b", 51.84e9), ("yuan2-102b", 102.57e9)])
def test_yuan_presets_match_published_parameter_counts(preset, published):
    cfg = get_preset(preset)
    assert count_parameters_meta(cfg) == param_counts(cfg).total
    assert abs(param_counts(cfg).total - published) / published < 0.01


def test_llama_twins_differ_by_the_lfa_filter_only():
    yuan, llama = param_counts(get_preset("yuan2-2b")), param_counts(get_preset("llama-2b"))
    h, layers = 2048, 24
    assert yuan.total - llama.total == layers * (2 * h * h + h // 2 + 2 * h)


def test_model_flops_follow_palm_6n_plus_12lhs():
    cfg = ModelConfig(vocab_size=1000, layers=2, hidden=64, heads=4, kv_heads=4, ffn=256, seq_len=128, lfa=False)
    n_matmul = 2 * (4 * 64 * 64 + 3 * 64 * 256) + 1000 * 64
    assert model_flops_per_token(cfg) == 6 * n_matmul + 12 * 2 * 64 * 128


def test_full_recompute_reproduces_megatron_formula_for_gpt_shapes():
    # Narayanan et al. 2021: 96 B s l h^2 (1 + s / 6h + V / 16 l h) FLOPs per step with full recomputation.
    l, h, s, v = 24, 2304, 2048, 51200
    cfg = ModelConfig(v, l, h, 24, 24, 4 * h, s, lfa=False, mlp="gelu")
    megatron_per_token = 96 * l * h * h * (1 + s / (6 * h) + v / (16 * l * h))
    assert hardware_flops_per_token(cfg, "full") == pytest.approx(megatron_per_token, rel=1e-12)
    assert recompute_flops_per_token(cfg, "selective") == 4 * l * s * h
    assert hardware_flops_per_token(cfg, "none") == model_flops_per_token(cfg)


def test_mfu_is_achieved_over_peak():
    cfg = get_preset("tiny")
    assert mfu(1000.0, cfg, 1000.0 * model_flops_per_token(cfg)) == pytest.approx(1.0)
    assert mfu(1000.0, cfg, 0.0) == 0.0


def test_yuan2_m32_matches_the_published_40b_total_and_3_7b_active():
    cfg = get_preset("yuan2-m32")
    counts = param_counts(cfg)
    assert count_parameters_meta(cfg) == counts.total
    assert abs(counts.total - 40e9) / 40e9 < 0.02
    assert abs(counts.active - 3.7e9) / 3.7e9 < 0.01


def test_active_parameters_leave_out_the_experts_a_token_skips():
    """Checked against the module: all non-expert parameters plus top_k / E of the stacked expert weights."""
    import torch

    from flopwise.models import Transformer

    cfg = get_preset("tiny-moe")
    with torch.device("meta"):
        model = Transformer(cfg)
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    others = sum(p.numel() for n, p in model.named_parameters() if ".experts." not in n)
    assert param_counts(cfg).active == others + experts * cfg.top_k // cfg.experts
    # tiny-moe's active FFN (2 x 384) is tiny's dense 768: the two differ by the router (h x 3E per layer)
    assert param_counts(cfg).active - param_counts(get_preset("tiny")).total == cfg.layers * 256 * 3 * cfg.experts
    dense = param_counts(get_preset("tiny"))
    assert dense.active == dense.total
    # a shared expert is counted whole in both, as the module holds it (DeepSeekMoE: total and active alike)
    shared = cfg.replace(shared_ffn=128)
    with torch.device("meta"):
        held = sum(p.numel() for p in Transformer(shared).parameters())
    assert param_counts(shared).total == held
    assert param_counts(shared).active - param_counts(cfg).active == cfg.layers * 3 * cfg.hidden * 128


def test_moe_model_flops_count_active_experts_and_the_attention_routers_core():
    e, k, h, f, v, s = 8, 2, 64, 32, 1000, 128
    base = ModelConfig(vocab_size=v, layers=2, hidden=h, heads=4, kv_heads=4, ffn=f, seq_len=s, lfa=False)
    attention, linear = base.replace(experts=e, top_k=k), base.replace(experts=e, top_k=k, router="linear")
    attn_core = 12 * 2 * h * s
    matmul = lambda router: 2 * (4 * h * h + h * router + k * 3 * h * f) + v * h  # noqa: E731
    # forward: 2 per active weight, attention core, router core 3 E^2 (outer product E^2 + times v 2 E^2); x3 for training
    assert model_flops_per_token(attention) == 6 * matmul(3 * e) + attn_core + 3 * 2 * 3 * e * e
    assert model_flops_per_token(linear) == 6 * matmul(e) + attn_core
    assert hardware_flops_per_token(attention, "full") - model_flops_per_token(attention) == pytest.approx(
        2 * matmul(3 * e) - 2 * v * h + 4 * 2 * h * s + 2 * 3 * e * e
    )


def test_sliding_window_attention_counts_the_band():
    """Model FLOPs count a windowed block's attention over its window (full-sequence convention); the fused kernel's
    FLOPs count the band's query-key pairs, the full causal half at a window of the sequence."""
    from flopwise.flops import attention_flops_per_token, causal_attention_flops

    cfg = get_preset("tiny-llama")  # 4 blocks, seq 256
    half = cfg.replace(window=64, global_every=2)  # blocks 0 and 2 windowed
    per_block = 4.0 * cfg.heads * cfg.head_dim
    assert attention_flops_per_token(half) == per_block * (2 * 256 + 2 * 64)
    assert attention_flops_per_token(cfg.replace(window=1024)) == attention_flops_per_token(cfg)  # wider than seq
    assert causal_attention_flops(256, 32, 8, 1, window=256) == causal_attention_flops(256, 32, 8, 1)
    assert causal_attention_flops(256, 32, 8, 1, window=64) == 4.0 * (256 * 64 - 64 * 64 / 2) * 32 * 8


@pytest.mark.parametrize("name, total, active", [
    ("llama3-8b", 8.03e9, 8.03e9), ("llama3-70b", 70.6e9, 70.6e9), ("llama3.1-405b", 405.9e9, 405.9e9),
    ("qwen3-30b-a3b", 30.5e9, 3.3e9), ("qwen3-235b-a22b", 235e9, 22e9), ("mixtral-8x7b", 46.7e9, 12.9e9),
    # OpenAI's "active" (3.61B, 5.13B) leaves out the input embedding, a lookup (201088 x 2880 = 0.58B); ours counts it
    ("gpt-oss-20b", 20.9e9, 3.61e9 + 0.58e9), ("gpt-oss-120b", 116.8e9, 5.13e9 + 0.58e9),
    # DeepSeek's cards: V2-Lite 15.7B / 2.4B activated (the input embedding, 102400 x 2048 = 0.21B, left out), V3 671B
    # / 37B (the multi-token-prediction module's 14B aside)
    ("deepseek-v2-lite", 15.7e9, 2.4e9 + 0.21e9), ("deepseek-v3", 671e9, 37e9),
])
def test_public_presets_have_their_model_cards_parameters(name, total, active):
    """The public architectures' presets count the parameters their model cards give (total; active per token),
    within 2% (GPT-OSS's biases and sinks, Qwen3's QK-norm are not modelled: each under 0.1%)."""
    counts = param_counts(get_preset(name))
    assert counts.total == pytest.approx(total, rel=0.02) and counts.active == pytest.approx(active, rel=0.02)
