"""Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434, section 2.1) in flopwise's model: the block against the
formula written out, decoding from the cache (keys wider than values) against the whole sequence, packed documents,
and leading dense blocks."""

import pytest
import torch

from flopwise.errors import ConfigError
from flopwise.models.config import ModelConfig
from flopwise.models.mlp import SwiGLU
from flopwise.models.moe import MoEFeedForward
from flopwise.models.rope import apply_rope
from flopwise.models.transformer import KVCache, Transformer

CFG = ModelConfig(256, 3, 64, 4, 4, 96, 32, lfa=False, experts=4, top_k=2, router="linear", dense_layers=1,
                  dense_ffn=80, kv_lora_rank=16, q_lora_rank=24, rope_head_dim=8)


def _model(cfg=CFG):
    torch.manual_seed(0)
    return Transformer(cfg).eval()


def test_a_latent_block_is_the_formula():
    """q = W_qb norm(W_qa x), [k_nope, v] = W_kvb norm(c), c and the shared rotated key from W_kva x; softmax over
    (q . k) / sqrt(head_dim + rope_head_dim), causal; values of head_dim, not padded."""
    model = _model()
    att = model.layers["0"].attn
    b, s, d, r, heads = 2, 10, 16, 8, 4
    x = torch.randn(b, s, 64)
    cos, sin = model.rope_cos[:s].unsqueeze(0), model.rope_sin[:s].unsqueeze(0)
    with torch.no_grad():
        got = att(x, cos, sin)
        q = att.wq_b(att.q_norm(att.wq_a(x))).view(b, s, heads, d + r)
        latent, k_rope = att.wkv_a(x).split([16, r], -1)
        k_nope, v = att.wkv_b(att.kv_norm(latent)).view(b, s, heads, 2 * d).split([d, d], -1)
        k = torch.cat([k_nope, apply_rope(k_rope.view(b, s, 1, r), cos, sin).expand(-1, -1, heads, -1)], -1)
        q = torch.cat([q[..., :d], apply_rope(q[..., d:], cos, sin)], -1)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / (d + r) ** 0.5
        scores = scores.masked_fill(torch.triu(torch.ones(s, s, dtype=torch.bool), 1), float("-inf"))
        want = att.wo(torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(b, s, -1))
    assert (got - want).abs().max() < 1e-5


def test_decoding_from_the_cache_gives_the_whole_sequence_logits():
    model = _model()
    tokens = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        whole = model(tokens)
        cache = KVCache(CFG, 2, 32)
        assert cache.layers[0]["k"].shape[-1] == 24 and cache.layers[0]["v"].shape[-1] == 16
        steps = [model(tokens[:, :12], cache=cache)] + [model(tokens[:, i:i + 1], cache=cache) for i in range(12, 20)]
    assert (torch.cat(steps, 1) - whole).abs().max() < 1e-4


def test_packed_documents_do_not_see_each_other():
    model = _model()
    a, b = torch.randint(1, 256, (1, 7)), torch.randint(1, 256, (1, 9))
    packed = torch.cat([a, b], 1)
    segments = torch.tensor([[0] * 7 + [1] * 9])
    with torch.no_grad():
        together = model(packed, segments=segments)
        alone = model(b)
    assert (together[:, 7:] - alone).abs().max() < 1e-4


def test_the_first_blocks_are_dense_and_the_rest_experts():
    model = _model()
    assert isinstance(model.layers["0"].mlp, SwiGLU) and model.layers["0"].mlp.w1.out_features == 80
    assert all(isinstance(model.layers[i].mlp, MoEFeedForward) for i in ("1", "2"))


@pytest.mark.parametrize("changes, message", [
    ({"kv_heads": 2}, "latent attention gives every head its own key and value"),
    ({"rope_head_dim": 0}, "needs model.rope_head_dim > 0"),
    ({"rope_head_dim": 7}, "model.rope_head_dim = 7: must be even"),
    ({"kv_lora_rank": 0, "q_lora_rank": 0}, "model.rope_head_dim = 8: latent attention needs model.kv_lora_rank"),
    ({"dense_ffn": 0}, "model.dense_layers and model.dense_ffn go together"),
    ({"dense_layers": 3}, "model.dense_layers = 3: must be fewer than model.layers = 3"),
    ({"experts": 0, "top_k": 2}, "leading dense blocks are for an MoE model"),
])
def test_inconsistent_latent_or_dense_settings_are_refused_by_name(changes, message):
    with pytest.raises(ConfigError, match=message):
        CFG.replace(**changes)
