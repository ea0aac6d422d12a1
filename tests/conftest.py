"""Shared fixtures: a small synthetic shard directory the `nano` preset (vocab 512) can learn from."""

from __future__ import annotations

import os

import numpy as np
import pytest

from flopwise.data.shards import ShardManifest, ShardWriter, write_manifest


def make_shards(directory, vocab_size: int = 512, docs: int = 300, seed: int = 0, eod_id: int = 0):
    """Documents drawn from a few repeated 'phrases', so a model can learn something in a few steps."""
    rng = np.random.default_rng(seed)
    phrases = [rng.integers(1, vocab_size, size=rng.integers(3, 9)) for _ in range(40)]
    writers = {s: ShardWriter(directory, s, vocab_size, eod_id, tokens_per_file=6000) for s in ("train", "eval")}
    for i in range(docs):
        doc = np.concatenate([phrases[j] for j in rng.integers(0, len(phrases), size=rng.integers(4, 20))])
        writers["eval" if i % 10 == 0 else "train"].add(doc)
    manifest = ShardManifest(vocab_size, eod_id, {s: w.close() for s, w in writers.items()})
    write_manifest(directory, manifest)
    return directory


@pytest.fixture(scope="session")
def nano_shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("nano_shards"))


@pytest.fixture
def umask_022():
    """The umask 022 for one test: a plain write then gives 0644, which a 0600 file cannot pass for."""
    old = os.umask(0o022)
    yield 0o644
    os.umask(old)
