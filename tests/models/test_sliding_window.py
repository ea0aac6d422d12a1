"""Sliding-window attention (model.window, model.global_every): each token of a windowed block sees itself and the
window - 1 tokens before it, in training, with packed documents and when decoding from a cache."""

import pytest
import torch

from flopwise.errors import ConfigError
from flopwise.models import KVCache, Transformer, document_segments, get_preset
from flopwise.models.attention import window_mask

BASE = get_preset("nano-llama")  # 2 blocks, hidden 64, seq 64, plain attention


def _model(seed=0, **changes) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(BASE.replace(**changes)).eval()
    model.init_weights(seed)
    return model


def test_the_mask_is_a_causal_band_of_the_window():
    mask = window_mask(3, 5, 2)  # the last 3 of 5 positions, each sees itself and 1 before
    assert mask.int().tolist() == [[0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]


def test_a_windowed_block_sees_only_its_window():
    """One windowed block under RoPE (relative positions): position i's output is that of the last position of the
    window ending at i, fed alone; full causal attention gives something else."""
    model = _model(layers=1, window=5)
    tokens = torch.randint(0, BASE.vocab_size, (1, 24))
    with torch.no_grad():
        full = model(tokens)
        for i in (4, 11, 23):
            alone = model(tokens[:, i - 4: i + 1])[0, -1]
            torch.testing.assert_close(full[0, i], alone, rtol=1e-4, atol=1e-4)
        causal = _model(layers=1)(tokens)
    assert (causal[0, 11] - full[0, 11]).abs().max() > 1e-3  # the test can fail: the window changes the output


def test_a_window_at_least_the_sequence_is_full_causal_attention():
    tokens = torch.randint(0, BASE.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(_model(window=16)(tokens), _model()(tokens))


def test_global_blocks_and_the_pattern():
    gpt_oss = BASE.replace(layers=6, window=128, global_every=2)
    assert [gpt_oss.layer_window(i) for i in range(6)] == [128, 0, 128, 0, 128, 0] and gpt_oss.windowed_layers == 3
    gemma3 = BASE.replace(layers=12, window=1024, global_every=6)
    assert [gemma3.layer_window(i) for i in range(12)].count(0) == 2 and gemma3.layer_window(5) == 0
    model = _model(window=4, global_every=2)
    assert [block.attn.window for block in model.layers.values()] == [4, 0]


def test_packed_documents_and_decoding_keep_the_window():
    model = _model(seed=3, window=6, global_every=2)
    eod = 0
    docs = [torch.cat([torch.randint(1, BASE.vocab_size, (n,)), torch.tensor([eod])]) for n in (9, 13)]
    packed = torch.cat(docs).unsqueeze(0)
    tokens = torch.randint(1, BASE.vocab_size, (2, 20))
    with torch.no_grad():
        logits = model(packed, document_segments(packed, eod))
        torch.testing.assert_close(logits[0, 10:], model(docs[1].unsqueeze(0))[0], rtol=1e-4, atol=1e-4)
        full = model(tokens)
        cache = KVCache(model.cfg, batch=2, max_len=20)
        steps = [model(tokens[:, :8], cache=cache)] + [model(tokens[:, t: t + 1], cache=cache) for t in range(8, 20)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("changes, message", [
    ({"window": -1}, "model.window = -1"),
    ({"global_every": 2}, "needs a sliding window"),
    ({"window": 8, "lfa": True}, "set model.lfa = false"),
    ({"window": 8, "global_every": 1}, "every block global"),
])
def test_bad_window_settings_name_the_key(changes, message):
    with pytest.raises(ConfigError, match=message):
        BASE.replace(**changes)
