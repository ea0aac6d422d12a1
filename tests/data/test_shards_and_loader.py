import numpy as np
import pytest

from flopwise.data.loader import TokenLoader
from flopwise.data.shards import ShardManifest, ShardWriter, TokenShards, read_manifest, write_manifest
from flopwise.errors import DataError, LayoutError


def _write(directory, docs, vocab=1000, per_file=50):
    writer = ShardWriter(directory, "train", vocab, 0, tokens_per_file=per_file)
    for doc in docs:
        writer.add(doc)
    write_manifest(directory, ShardManifest(vocab, 0, {"train": writer.close()}))


def test_round_trip_keeps_documents_and_boundaries(tmp_path):
    docs = [list(range(1, n)) for n in (30, 45, 7, 60)]
    _write(tmp_path, docs)
    shards = TokenShards(tmp_path)
    stream = np.concatenate(shards.arrays)
    assert shards.manifest.splits["train"].documents == 4 and len(shards.arrays) > 1
    assert stream.dtype == np.uint16
    assert stream.tolist() == sum((d + [0] for d in docs), [])


def test_large_vocab_uses_uint32(tmp_path):
    _write(tmp_path, [[70000, 5]], vocab=100_000)
    assert TokenShards(tmp_path).arrays[0].dtype == np.dtype("<u4")


def test_missing_or_inconsistent_shards_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="manifest.json is missing"):
        read_manifest(tmp_path)
    _write(tmp_path, [list(range(1, 40))])
    with pytest.raises(DataError, match="no split 'eval'"):
        TokenShards(tmp_path, "eval")
    (tmp_path / "train-00000.bin").unlink()
    with pytest.raises(DataError, match="missing"):
        TokenShards(tmp_path)
    with pytest.raises(DataError, match="out of range"):
        ShardWriter(tmp_path / "x", "train", 10, 0).add([11])


def test_loader_is_deterministic_resumable_and_layout_independent(tmp_path):
    _write(tmp_path, [list(range(1, 200)) for _ in range(5)], per_file=400)
    shards = TokenShards(tmp_path)
    a = TokenLoader(shards, seq_len=16, global_batch=4, seed=3)
    batches = [a.next_batch() for _ in range(10)]
    inputs, targets = batches[0]
    assert inputs.shape == (4, 16) and (inputs[:, 1:] == targets[:, :-1]).all()
    b = TokenLoader(shards, seq_len=16, global_batch=4, seed=3)
    b.load_state_dict({"position": 4 * 6})
    assert all((x == y).all() for x, y in zip(b.next_batch(), batches[6], strict=True))
    halves = [TokenLoader(shards, 16, 4, seed=3, rank=r, world=2) for r in (0, 1)]
    for expected in batches[:3]:
        parts = [h.next_batch()[0] for h in halves]
        assert (np.concatenate(parts) == expected[0].numpy()).all()
    with pytest.raises(LayoutError, match="global batch 5 is not divisible by the data-parallel degree 2"):
        TokenLoader(shards, 16, 5, world=2)
    with pytest.raises(DataError, match="too few"):
        TokenLoader(shards, 10_000, 4)
