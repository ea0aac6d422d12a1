"""The tokenizer: trained on the kept documents (byte-level BPE) or loaded from `tokenizer.path`; and
which documents are held out for evaluation."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path

import xxhash

from flopwise.atomic import atomic_write_text
from flopwise.data.config import OutputConfig, PipelineConfig
from flopwise.data.document import text_bytes
from flopwise.errors import DataError
from flopwise.userfiles import read_text


def held_out(output: OutputConfig) -> Callable[[str], bool]:
    """doc id -> True when the document belongs to the eval split: a salted hash of the id, so the split
    depends on nothing but the id, the fraction and the seed."""
    fraction, salt = output.eval_fraction, str(output.seed).encode() + b":"
    if fraction <= 0:
        return lambda doc_id: False
    limit = fraction * 2**64
    return lambda doc_id: xxhash.xxh64_intdigest(salt + doc_id.encode("utf-8", "surrogatepass")) < limit


def load_tokenizer(path: Path):
    """The tokenizer in `path`, loaded once per process (per version of the file)."""
    return _load(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _load(path: Path, mtime_ns: int):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def make_tokenizer(cfg: PipelineConfig, docs: Iterable[dict], out: Path) -> None:
    """Write the pipeline's tokenizer to `out`: a copy of tokenizer.path, or a byte-level BPE trained on
    the training-split documents of `docs` (at most tokenizer.train_bytes of them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tc = cfg.tokenizer
    if tc.path:
        src = cfg.resolve(tc.path)
        text = read_text(src, "tokenizer.path")
        try:
            tok = Tokenizer.from_str(text)
        except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for bad files
            raise DataError(f"tokenizer.path = {src}: cannot load a tokenizers file ({exc})") from None
        if tok.token_to_id(tc.eod_token) is None:
            raise DataError(f"tokenizer {src} has no end-of-document token {tc.eod_token!r}")
        atomic_write_text(out, text)
        return
    is_eval = held_out(cfg.output)

    def texts():
        budget = tc.train_bytes
        for doc in docs:
            if is_eval(doc["id"]):
                continue
            budget -= text_bytes(doc["text"])
            yield doc["text"]
            if budget <= 0:
                return

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=tc.vocab_size,
        min_frequency=tc.min_frequency,
        special_tokens=[tc.eod_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts(), trainer=trainer)
    atomic_write_text(out, tok.to_str())
