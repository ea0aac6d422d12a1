"""Incremental detokenising: streamed pieces add up to the decoded output, characters split across tokens
are never sent half, and stop strings cut where they would in the whole text."""

from __future__ import annotations

import random

import pytest

from flopwise.serve.sequence import Detokenizer

TEXT = "def naïve(x):\n    return x  # café, Größe, 日本語, 🙂🙂 — done\nprint(naïve(1))\n" * 3


def _stream(tokenizer, ids: list[int], stop: list[str], rng: random.Random) -> tuple[str, list[str], bool]:
    """Feed ids to a Detokenizer a few at a time, as steps do; (text, pieces, stopped)."""
    det, pieces, i = Detokenizer(stop), [], 0
    while i < len(ids):
        i = min(len(ids), i + rng.choice([1, 1, 1, 2, 5]))
        piece, stopped = det.update(tokenizer, ids[:i], i == len(ids))
        pieces.append(piece)
        if stopped:
            return det.text, pieces, True
    return det.text, pieces, False


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streamed_pieces_add_up_to_the_decoded_output(served_llama, seed):
    tokenizer = served_llama.tokenizer
    rng = random.Random(seed)
    ids = tokenizer.encode(TEXT).ids
    assert tokenizer.decode(ids) == TEXT
    if seed:  # random tokens too (bytes of several characters split anywhere)
        ids = [rng.randrange(tokenizer.get_vocab_size()) for _ in range(120)]
    text, pieces, stopped = _stream(tokenizer, ids, [], rng)
    assert not stopped and text == "".join(pieces) == tokenizer.decode(ids)
    if not seed:  # a whole-character text: no piece carries a replacement character
        assert not any("\ufffd" in p for p in pieces)


@pytest.mark.parametrize("stop", [["日本語"], ["Größe", "🙂"], ["print(naïve(1))\ndef"], ["absent"]])
def test_stop_strings_cut_the_output_where_the_whole_text_has_them(served_llama, stop):
    tokenizer = served_llama.tokenizer
    ids = tokenizer.encode(TEXT).ids
    text, pieces, stopped = _stream(tokenizer, ids, stop, random.Random(0))
    hits = [TEXT.find(s) for s in stop if s in TEXT]
    expected = TEXT[: min(hits)] if hits else TEXT
    assert stopped == bool(hits) and text == "".join(pieces) == expected
