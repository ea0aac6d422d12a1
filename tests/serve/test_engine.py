"""The engine against the model's plain full-sequence forward: greedy outputs, log-probabilities, and
independence from whatever else is in the batch (continuous batching, chunked prefill, prefix caching and
preemption change the schedule, never the result)."""

from __future__ import annotations

import random

import pytest
import torch

from flopwise.serve.config import EngineConfig, QueueFullError, RequestError
from flopwise.serve.engine import Engine
from flopwise.serve.paged import logits
from flopwise.serve.sampling import SamplingParams, argmax_rows

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


def reference_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Plain decoding: the whole sequence through Transformer.forward for every new token, no cache."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            token = int(model(torch.tensor([ids]))[0, -1].argmax())
            out.append(token)
            ids.append(token)
    return out


def prompts(count: int, seed: int, low: int = 1, high: int = 150) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, 512) for _ in range(rng.randrange(low, high))] for _ in range(count)]


def engine(served, **kw) -> Engine:
    return Engine(served, EngineConfig(**{"block_size": 8, "max_num_batched_tokens": 64, "device": "cpu", **kw}))


@pytest.mark.parametrize("which", ["lfa", "llama"])
def test_greedy_output_equals_plain_full_sequence_decoding(which, served_lfa, served_llama):
    served = served_lfa if which == "lfa" else served_llama
    batch = prompts(6, seed=1)
    outs = engine(served).generate(batch, GREEDY)  # chunked prefill: prompts up to 150 tokens, 64 per step
    for prompt, out in zip(batch, outs, strict=True):
        assert out == reference_greedy(served.model, prompt, 12)


def test_identical_alone_or_among_32_concurrent_requests(served_lfa):
    target = prompts(1, seed=2, low=40, high=41)[0]
    others = prompts(32, seed=3)
    sampled = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.9, top_k=50, seed=7, ignore_eos=True)
    alone = engine(served_lfa).generate([target, target], [GREEDY, sampled])
    crowd = engine(served_lfa, max_num_seqs=40).generate(
        others[:16] + [target] + others[16:] + [target], [GREEDY] * 16 + [GREEDY] + [sampled] * 17)
    assert crowd[16] == alone[0]  # greedy, fp32 CPU
    assert crowd[-1] == alone[1]  # seeded sampling draws from the request's own generator
    # and no request sees another's tokens: every other output is its own plain decoding
    for prompt, out in zip(others[:16], crowd[:16], strict=True):
        assert out == reference_greedy(served_lfa.model, prompt, 12)


def test_preemption_by_recompute_keeps_outputs(served_lfa):
    batch = prompts(10, seed=4, low=60, high=120)
    eng = engine(served_lfa, num_blocks=24)  # one full-context sequence, far less than ten need
    outs = eng.generate(batch, GREEDY)
    assert eng.stats()["preemptions"] > 0
    assert eng.stats()["free_blocks"] == 24
    for prompt, out in zip(batch, outs, strict=True):
        assert out == reference_greedy(served_lfa.model, prompt, 12)


@pytest.mark.parametrize("which", ["lfa", "llama"])
def test_prefix_cache_reuses_blocks_and_restores_the_filter_state(which, served_lfa, served_llama):
    served = served_lfa if which == "lfa" else served_llama
    shared = prompts(1, seed=5, low=50, high=51)[0]
    first, second = shared + [7, 8, 9], shared + [10, 11]
    eng = engine(served)
    eng.generate([first], GREEDY)
    before = eng.stats()["prefix_cache_hits"]
    out = eng.generate([second], GREEDY)[0]
    assert eng.stats()["prefix_cache_hits"] - before == 50 // 8  # every full block of the shared prefix
    assert out == reference_greedy(served.model, second, 12)


@pytest.mark.parametrize("companion", [False, True])
def test_a_block_completed_while_decoding_saves_the_filter_state_for_reuse(companion, served_lfa):
    """Block 6 (positions 48-55) fills up while the first request decodes, alone (the all-decode batch) or
    next to a prompt being prefilled in small chunks (the general batch); a follow-up that extends the
    conversation reuses it, so the LFA state saved at its end must be right."""
    first = prompts(1, seed=9, low=50, high=51)[0]
    others = [prompts(1, seed=10, low=150, high=151)[0]] if companion else []
    eng = engine(served_lfa, max_num_batched_tokens=16)
    out = eng.generate([first, *others], GREEDY)[0]
    follow_up = first + out + [3, 4]
    before = eng.stats()["prefix_cache_hits"]
    again = eng.generate([follow_up], GREEDY)[0]
    assert eng.stats()["prefix_cache_hits"] - before >= 7  # blocks 0-6: block 6 was completed by a decode
    assert again == reference_greedy(served_lfa.model, follow_up, 12)


def test_logprobs_and_prompt_logprobs_match_the_model(served_lfa):
    prompt = prompts(1, seed=6, low=30, high=31)[0]
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True, logprobs=3, prompt_logprobs=2)
    eng = engine(served_lfa, max_num_batched_tokens=16)  # prompt scored over two chunks
    rid = eng.add_request(prompt, params)
    outs = []
    while eng.has_work():
        outs += [o for o in eng.step() if o.request_id == rid]
    tokens = [t for o in outs for t in o.token_ids]
    lps = [lp for o in outs for lp in o.logprobs]
    full = prompt + tokens
    with torch.no_grad():
        ref = torch.log_softmax(served_lfa.model(torch.tensor([full]))[0].float(), -1)
    prompt_lps = outs[0].prompt_logprobs
    assert prompt_lps[0] is None and len(prompt_lps) == len(prompt)
    for i in range(1, len(prompt)):
        assert prompt_lps[i].token_id == prompt[i]
        assert abs(prompt_lps[i].logprob - ref[i - 1, prompt[i]].item()) < 1e-4
        assert len(prompt_lps[i].top) == 2
    for j, lp in enumerate(lps):
        pos = len(prompt) + j - 1
        assert abs(lp.logprob - ref[pos, tokens[j]].item()) < 1e-4
        assert lp.top[0][0] == tokens[j] and len(lp.top) == 3  # greedy: the chosen token is the top one


def test_sampling_controls(served_lfa):
    prompt = prompts(1, seed=8, low=20, high=21)[0]
    eng = engine(served_lfa)
    greedy = eng.generate([prompt], GREEDY)[0]
    top1 = SamplingParams(max_tokens=12, temperature=1.5, top_k=1, seed=3, ignore_eos=True)
    tiny_p = SamplingParams(max_tokens=12, temperature=1.5, top_p=1e-6, seed=3, ignore_eos=True)
    assert eng.generate([prompt, prompt], [top1, tiny_p]) == [greedy, greedy]
    hot = [SamplingParams(max_tokens=12, temperature=2.0, seed=s, ignore_eos=True) for s in (1, 1, 2)]
    a, b, c = eng.generate([prompt] * 3, hot)
    assert a == b and a != c  # a seed fixes the sample; another seed gives another


def test_argmax_rows_is_torch_argmax_first_of_ties_included():
    torch.manual_seed(0)
    logits = torch.randn(9, 1000)
    logits[1, [7, 400, 999]] = 50.0  # ties: the first index wins
    logits[2] = 0.0
    logits[3, 5] = float("nan")  # as torch: a NaN counts as the largest
    for rows in (logits, logits[::2], logits.t().contiguous().t(), logits.double()):
        assert argmax_rows(rows) == rows.argmax(dim=-1).tolist()
    assert argmax_rows(logits)[1:4] == [7, 0, 5]


def test_logits_in_vocabulary_slices_equal_the_output_layer():
    """The sliced output projection (CPU) gives the output layer's logits, whatever the vocabulary's size
    against a slice; a layer with a bias goes through the layer itself."""
    torch.manual_seed(0)
    h = torch.randn(5, 256)
    for vocab in (100, 512, 8192 + 3):
        layer = torch.nn.Linear(256, vocab, bias=False)
        assert torch.allclose(logits(layer, h), layer(h), atol=1e-5) and logits(layer, h).shape == (5, vocab)
    with_bias = torch.nn.Linear(256, 3000)
    assert torch.equal(logits(with_bias, h), with_bias(h))


def test_stop_conditions(served_lfa):
    eng = engine(served_lfa)
    tok = served_lfa.tokenizer
    prompt = tok.encode("def main():\n    return").ids
    base = eng.generate([prompt], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))[0]
    text = tok.decode(base)
    stop = text[5:8]
    rid = eng.add_request(prompt, SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, stop=[stop]))
    pieces, reason = [], None
    while eng.has_work():
        for out in eng.step():
            if out.request_id == rid:
                pieces.append(out.text)
                reason = out.finish_reason
    assert "".join(pieces) == text[: text.find(stop)] and reason == "stop"
    # a stop token ends the request without being emitted; max_tokens gives finish reason "length"
    out = eng.generate([prompt], SamplingParams(max_tokens=30, temperature=0, stop_token_ids=[base[3]]))[0]
    assert out == base[: base.index(base[3])]


def test_requests_are_validated_and_the_queue_is_bounded(served_lfa):
    eng = engine(served_lfa, max_waiting=2)
    with pytest.raises(RequestError, match="maximum context length is 192"):
        eng.add_request([1] * 192, SamplingParams())
    with pytest.raises(RequestError, match="maximum context length"):
        eng.add_request([1] * 100, SamplingParams(max_tokens=100))
    with pytest.raises(RequestError, match="empty"):
        eng.add_request([], SamplingParams())
    with pytest.raises(RequestError, match="top_p"):
        SamplingParams(top_p=0)
    eng.add_request([1, 2], SamplingParams())
    eng.add_request([1, 2], SamplingParams())
    with pytest.raises(QueueFullError):
        eng.add_request([1, 2], SamplingParams())


def test_abort_frees_blocks_at_once(served_lfa):
    eng = engine(served_lfa)
    rid = eng.add_request(prompts(1, seed=9, low=100, high=101)[0], SamplingParams(max_tokens=50, ignore_eos=True))
    eng.step()
    assert eng.stats()["free_blocks"] < eng.num_blocks
    assert eng.abort(rid)
    assert eng.stats()["free_blocks"] == eng.num_blocks and not eng.has_work()


def test_end_of_document_id_comes_from_the_manifest_then_the_tokenizer(lfa_checkpoint, tmp_path):
    import json
    import shutil

    from flopwise.serve.loader import load_served_model

    run = tmp_path / "run"
    shutil.copytree(lfa_checkpoint, run)
    step = next((run / "checkpoints").glob("step_*"))
    config = json.loads((step / "config.json").read_text())
    shards = tmp_path / "shards"
    shutil.copytree(config["shards"], shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["eod_id"] = 7  # the data was packed with id 7 as its end-of-document token
    (shards / "manifest.json").write_text(json.dumps(manifest))
    config["shards"] = str(shards)
    (step / "config.json").write_text(json.dumps(config))
    assert load_served_model(run, device="cpu").eod_id == 7
    shutil.rmtree(shards)  # manifest gone: the tokenizer's single special token
    served = load_served_model(run, device="cpu")
    assert served.eod_id == served.tokenizer.token_to_id("<|endoftext|>")
