import pytest

from flopwise.errors import ParallelError
from flopwise.models import get_preset
from flopwise.parallel.pipeline import balanced_split, parse_split, stage_estimates


def test_auto_split_reproduces_yuan2_example():
    # reference/yuan2.md: 24 layers, h = 6144, 8 stages -> [2,2,3,3,4,4,4,2] under 1F1B
    cfg = get_preset("yuan2-2b").replace(hidden=6144, heads=48, kv_heads=48, ffn=24576, seq_len=4096)
    split = balanced_split(cfg, 8, micro_batch=1, seq=4096, microbatches=16)
    assert split == [2, 2, 3, 3, 4, 4, 4, 2]
    uniform = stage_estimates(cfg, [3] * 8, micro_batch=1, seq=4096, microbatches=16, bytes_per_value=2)
    tuned = stage_estimates(cfg, split, micro_batch=1, seq=4096, microbatches=16, bytes_per_value=2)
    assert tuned[0].total_bytes < 0.75 * uniform[0].total_bytes  # the paper: 78 GB -> 56 GB on stage 0
    assert max(t.total_bytes for t in tuned) < max(u.total_bytes for u in uniform)


def test_gpipe_keeps_every_microbatch_in_flight():
    cfg = get_preset("nano").replace(layers=4)
    est = stage_estimates(cfg, [2, 2], micro_batch=1, seq=64, microbatches=6, schedule="gpipe")
    assert [e.in_flight for e in est] == [6, 6]
    est = stage_estimates(cfg, [2, 2], micro_batch=1, seq=64, microbatches=6, schedule="1f1b")
    assert [e.in_flight for e in est] == [2, 1]


@pytest.mark.parametrize(("text", "message"), [("2,2", "gives 2 stages"), ("1,1,1", "sums to 3"), ("0,2,2", "at least one"),
                                              ("a,b,c", "comma-separated")])
def test_explicit_split_is_checked(text, message):
    with pytest.raises(ParallelError, match=message):
        parse_split(text, layers=4, stages=3)
    assert parse_split("1,2,1", 4, 3) == [1, 2, 1] and parse_split("auto", 4, 3) is None
