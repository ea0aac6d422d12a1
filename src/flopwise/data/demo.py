"""The embedded default corpus: the Python standard library of the running interpreter.

Every machine has real code to train on without a download. Prepared once into token shards under the
cache directory (keyed by interpreter version and vocabulary size); a second run reuses them."""

from __future__ import annotations

import hashlib
import logging
import sysconfig
import zlib
from collections.abc import Callable
from pathlib import Path

from flopwise.data.shards import MANIFEST, ShardManifest, ShardWriter, sha256_file, write_manifest
from flopwise.errors import DataError

log = logging.getLogger(__name__)
EOD = "<|endoftext|>"


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts)
    if not files:
        raise DataError(f"empty corpus: no *.py files under {root}")
    return files


def is_eval_file(path: Path, eval_percent: int) -> bool:
    """Held-out split by a stable hash of the file's relative name."""
    return zlib.crc32(path.name.encode() + str(path.parent.name).encode()) % 100 < eval_percent


def demo_corpus_dir(cache_dir: str | Path, vocab_size: int) -> Path:
    root = Path(sysconfig.get_paths()["stdlib"])
    key = hashlib.sha256(f"{root}|{vocab_size}|v2".encode()).hexdigest()[:12]
    return Path(cache_dir) / f"stdlib-{key}"


def prepare_demo_corpus(
    cache_dir: str | Path,
    vocab_size: int = 8192,
    eval_percent: int = 3,
    progress: Callable[[str], None] | None = None,
) -> Path:
    out = demo_corpus_dir(cache_dir, vocab_size)
    if (out / MANIFEST).is_file():
        log.info("demo corpus cached at %s", out)
        return out
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    files = stdlib_files()
    texts, unreadable = [], 0
    for path in files:
        try:
            texts.append((path, path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:  # a few test files are deliberately not UTF-8
            unreadable += 1
            log.debug("skipping %s: %s", path, exc)
    # Skip empty and machine-generated files (the codec tables in encodings/ say "generated"): data, not code.
    texts = [(p, t) for p, t in texts if t.strip() and "generated" not in t[:400].lower()]
    if not texts:
        raise DataError("empty corpus: no readable standard-library source files")
    if progress:
        progress(f"training a {vocab_size}-token byte-level BPE tokenizer on {len(texts)} files "
                 f"({unreadable} not UTF-8, {len(files) - unreadable - len(texts)} empty or generated: skipped)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    train_texts = [t for p, t in texts if not is_eval_file(p, eval_percent)]
    tokenizer.train_from_iterator(train_texts, trainer=trainer)
    eod_id = tokenizer.token_to_id(EOD)
    out.mkdir(parents=True, exist_ok=True)
    tok_path = out / "tokenizer.json"
    tokenizer.save(str(tok_path))
    if progress:
        progress("tokenizing and packing into shards")
    writers = {s: ShardWriter(out, s, tokenizer.get_vocab_size(), eod_id) for s in ("train", "eval")}
    batch = 256
    for i in range(0, len(texts), batch):
        chunk = texts[i : i + batch]
        for (path, _), enc in zip(chunk, tokenizer.encode_batch([t for _, t in chunk]), strict=True):
            writers["eval" if is_eval_file(path, eval_percent) else "train"].add(enc.ids)
    manifest = ShardManifest(
        vocab_size=tokenizer.get_vocab_size(),
        eod_id=eod_id,
        splits={s: w.close() for s, w in writers.items()},
        tokenizer_file="tokenizer.json",
        tokenizer_sha256=sha256_file(tok_path),
        extra={"source": "python-stdlib", "files": len(texts)},
    )
    write_manifest(out, manifest)  # last: its presence marks the directory complete
    return out
