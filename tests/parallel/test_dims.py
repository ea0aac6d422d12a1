import pytest

from flopwise.errors import ParallelError
from flopwise.models import get_preset
from flopwise.parallel.dims import ParallelDims

NANO4 = get_preset("nano").replace(layers=4)


@pytest.mark.parametrize(
    ("dims", "kwargs", "message"),
    [
        (ParallelDims(tp=2, world_size=4), {}, "= 2, but the world size is 4"),
        (ParallelDims(tp=8, world_size=8), {}, "must divide heads (4) and kv_heads (2)"),
        (ParallelDims(pp=8, world_size=8), {}, "8 pipeline stages (pp 8 x chunks 1) exceed 4 layers"),
        (ParallelDims(pp=2, world_size=2), {"pp_chunks": 2}, "needs parallel.pp_schedule = 'interleaved'"),
        (ParallelDims(pp=2, world_size=2), {"local_batch": 2, "micro_batch": 2}, "needs at least 2 micro-batches"),
        (ParallelDims(pp=2, world_size=2), {"local_batch": 6, "micro_batch": 2, "pp_schedule": "interleaved"},
         "divisible by pp"),
        (ParallelDims(tp=2, world_size=2), {"seq_len": 63}, "seq_len (63) divisible by tp (2)"),
        (ParallelDims(dp_replicate=2, world_size=2), {"zero": 3}, "ZeRO-3 shards over dp_shard"),
    ],
)
def test_impossible_layouts_name_the_constraint_and_numbers(dims, kwargs, message):
    with pytest.raises(ParallelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dims.validate(NANO4, **kwargs)


def test_valid_layout_and_description():
    dims = ParallelDims(dp_replicate=1, dp_shard=2, tp=2, pp=2, world_size=8)
    dims.validate(NANO4, local_batch=8, micro_batch=2)
    assert dims.describe() == "pp2xdp_shard2xtp2" and dims.dp == 2


def _job(**sets):
    from flopwise.train.config import load_config

    return load_config(overrides=[f"{k}={v}" for k, v in sets.items()])


@pytest.mark.parametrize(
    ("sets", "local_batch", "pp", "micro"),
    [
        ({"train.micro_batch": 16}, 8, 1, 8),  # an upper bound: a rank with 8 sequences runs one micro-batch
        ({"train.micro_batch": 2}, 8, 1, 2),
        ({"train.micro_batch": 2}, 8, 2, 2),  # gives 4 >= pp micro-batches: honoured
        ({"train.micro_batch": 16}, 16, 2, 4),  # gives 1 < pp: 2 x pp = 4 micro-batches
        ({"train.micro_batch": 16}, 6, 4, 1),  # 2 x pp = 8 > 6 sequences: one sequence each
        ({"train.micro_batch": 16}, 12, 4, 1),  # 8 does not divide 12: the next count that does (12)
        ({"train.micro_batch": 16, "parallel.pp_microbatches": 8}, 16, 2, 2),
    ],
)
def test_micro_batch_size_per_rank(sets, local_batch, pp, micro):
    from flopwise.parallel.dims import micro_batch_for

    assert micro_batch_for(_job(**sets), local_batch, pp) == micro


def test_pp_microbatches_must_divide_the_rank_batch():
    from flopwise.parallel.dims import micro_batch_for

    with pytest.raises(ParallelError, match="pp_microbatches = 3 must divide the 16 sequences per rank"):
        micro_batch_for(_job(**{"train.micro_batch": 16, "parallel.pp_microbatches": 3}), 16, 2)
