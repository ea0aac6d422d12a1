import pytest
import torch

from flopwise.errors import ConfigError
from flopwise.models import KVCache, Transformer, document_segments, get_preset


def _model(lfa: bool, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(get_preset("nano").replace(lfa=lfa)).eval()


def test_document_segments_counts_eod_strictly_before():
    tokens = torch.tensor([[5, 1, 0, 7, 0, 0, 3]])
    assert document_segments(tokens, eod_id=0).tolist() == [[0, 0, 0, 1, 1, 2, 3]]


@pytest.mark.parametrize("lfa", [True, False])
def test_packed_batch_matches_each_document_alone(lfa):
    model = _model(lfa)
    eod = 0
    docs = [torch.randint(1, 512, (n,)) for n in (7, 12, 5)]
    docs = [torch.cat([d, torch.tensor([eod])]) for d in docs]
    packed = torch.cat(docs).unsqueeze(0)
    with torch.no_grad():
        logits = model(packed, document_segments(packed, eod))
        start = 0
        for doc in docs:
            alone = model(doc.unsqueeze(0))
            torch.testing.assert_close(logits[0, start : start + len(doc)], alone[0], rtol=1e-4, atol=1e-4)
            start += len(doc)


def test_lfa_leaks_across_documents_without_segments():
    """Sanity check that the packed test is sensitive: without segments the second document changes."""
    model = _model(True)
    first, second = torch.randint(1, 512, (1, 6)), torch.randint(1, 512, (1, 6))
    with torch.no_grad():
        joined = model(torch.cat([first, second], dim=1))[0, 6:]
        alone = model(second)[0]
    assert (joined - alone).abs().max() > 1e-3


@pytest.mark.parametrize("lfa", [True, False])
def test_incremental_decoding_matches_full_forward(lfa):
    model = _model(lfa, seed=1)
    tokens = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache(model.cfg, batch=2, max_len=20)
        prefill = model(tokens[:, :8], cache=cache)  # a chunk, then one token at a time
        steps = [model(tokens[:, t : t + 1], cache=cache) for t in range(8, 20)]
    incremental = torch.cat([prefill, *steps], dim=1)
    torch.testing.assert_close(incremental, full, rtol=1e-4, atol=1e-4)


def test_left_padding_as_its_own_segment_matches_unpadded():
    model = _model(True, seed=2)
    prompt = torch.randint(1, 512, (1, 9))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), prompt], dim=1)
    segments = torch.tensor([[0] * 4 + [1] * 9])
    with torch.no_grad():
        ref = model(prompt)[0, -1]
        cache = KVCache(model.cfg, batch=1, max_len=16)
        out = model(padded, segments, cache=cache)[0, -1]
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        nxt = torch.tensor([[7]])
        ref2 = model(torch.cat([prompt, nxt], dim=1))[0, -1]
        out2 = model(nxt, torch.tensor([[1]]), cache=cache)[0, -1]
        torch.testing.assert_close(out2, ref2, rtol=1e-4, atol=1e-4)


def test_context_overflow_is_a_config_error():
    model = _model(False)
    with pytest.raises(ConfigError, match="context"):
        model(torch.zeros(1, model.cfg.seq_len + 1, dtype=torch.long))


def test_tied_embeddings_share_storage_and_lfa_adds_about_2h2_per_layer():
    lfa, plain = _model(True), _model(False)
    assert lfa.output.weight is lfa.tok_embeddings.weight
    h, layers = lfa.cfg.hidden, lfa.cfg.layers
    extra = sum(p.numel() for p in lfa.parameters()) - sum(p.numel() for p in plain.parameters())
    # two kernel-2 convs (h -> h/2 -> h) with biases plus an RMSNorm weight
    assert extra == layers * (2 * h * h + h // 2 + h + h)
