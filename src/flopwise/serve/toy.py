"""A servable checkpoint without training: randomly initialised weights saved through the normal
checkpoint code, with a byte-level BPE tokenizer trained on a given text. For tests, benchmarks, and for
trying the server or the export on a model shape before training one."""

from __future__ import annotations

from pathlib import Path

from flopwise.data.shards import ShardManifest, write_manifest
from flopwise.train.checkpoint import save_checkpoint
from flopwise.train.config import load_config
from flopwise.train.engine import Engine

EOD_TOKEN = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int, path: Path) -> int:
    """Train a byte-level BPE tokenizer (the data pipeline's kind) and save it; returns its end-of-document id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOD_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return tok.token_to_id(EOD_TOKEN)


def random_checkpoint(out: str | Path, texts: list[str], preset: str = "nano", overrides: list[str] | None = None,
                      seed: int = 0) -> Path:
    """Write `out`/checkpoints/step_00000000 with random weights; the run directory `out` is servable."""
    out = Path(out)
    job = load_config(None, [f"train.seed={seed}", *(overrides or [])], preset=preset, out=str(out))
    cfg = job.model_config()
    shards = out / "tokenizer"
    eod = train_tokenizer(texts, cfg.vocab_size, shards / "tokenizer.json")
    write_manifest(shards, ShardManifest(cfg.vocab_size, eod, {}, "tokenizer.json"))
    engine = Engine(job)
    saved = {"job": job.to_dict(), "model": cfg.to_dict(), "shards": str(shards)}
    return save_checkpoint(out, 0, engine, {"step": 0}, saved, shards / "tokenizer.json", keep=1)
