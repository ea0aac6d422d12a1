"""The one layout check (flopwise.layout): every refusal names the constraint and its numbers; ZeRO never runs as
a no-op; the job config and the planner read the same vocabulary."""

import re

import pytest

from flopwise.config_values import parse_bool
from flopwise.errors import ConfigError, LayoutError
from flopwise.layout import Layout, check, parse_layout, parse_split
from flopwise.models import get_preset
from flopwise.parallel.dims import ParallelDims
from flopwise.train.config import job_keys, load_config, micro_batch_for, resolve_layout

NANO4 = get_preset("nano").replace(layers=4)  # heads 4, kv_heads 2, ffn 128, vocab 512, seq 64


@pytest.mark.parametrize(
    ("layout", "kwargs", "message"),
    [
        (Layout(tp=2), {"world": 4}, "pp x dp x tp = 1 x 1 x 2 = 2, but the world size is 4"),
        (Layout(tp=4), {}, "tensor parallel degree 4 must divide heads (4) and kv_heads (2)"),
        (Layout(pp=8, micro_batch=1), {}, "8 pipeline stages (pp 8 x vpp 1) exceed 4 layers plus one stage for the "
         "embedding and one for the LM head"),
        (Layout(pp=2, vpp=2, split=(1, 0, 2, 1)), {}, "split 1,0,2,1: every stage but the first and the last needs"),
        (Layout(pp=2, vpp=2, schedule="gpipe"), {}, "vpp = 2 runs the interleaved schedule, not 'gpipe'"),
        (Layout(pp=2, schedule="interleaved"), {}, "schedule = 'interleaved' needs vpp > 1"),
        (Layout(vpp=2), {}, "vpp = 2 needs pp > 1"),
        (Layout(pp=2, micro_batch=4), {"global_batch": 4}, "needs at least 2 micro-batches per step"),
        (Layout(pp=2, vpp=2, micro_batch=2), {"global_batch": 6}, "micro-batches (3) divisible by pp (2)"),
        (Layout(tp=2), {"seq_len": 63}, "seq_len (63) divisible by tp (2)"),
        (Layout(dp=2), {"global_batch": 3}, "global batch 3 is not divisible by the data-parallel degree 2"),
        (Layout(dp=2, micro_batch=3), {"global_batch": 8}, "4 sequences per data-parallel rank"),
        (Layout(pp=2, split=(1, 2)), {}, "split 1,2 sums to 3 layers; the model has 4"),
        (Layout(pp=2, split=(4,)), {}, "split 4 gives 1 stages, the layout has 2"),
        (Layout(ep=2, dp=2), {}, "ep = 2 needs a mixture-of-experts model (model.experts > 0); this one is dense"),
        (Layout(cp=2), {}, "cp = 2: context parallelism is not implemented yet"),
        (Layout(recompute="selective", recompute_every=2), {}, "recompute_every = 2 applies to recompute = 'full'"),
    ],
)
def test_impossible_layouts_name_the_constraint_and_numbers(layout, kwargs, message):
    args = {"global_batch": 8, **kwargs}
    with pytest.raises(LayoutError, match=re.escape(message)):
        check(layout, NANO4, args["global_batch"], args.get("seq_len"), args.get("world"))


def test_another_trainers_1f1b_may_run_fewer_microbatches_than_stages_an_interleaved_one_may_not():
    # Megatron's and DeepSpeed's 1F1B warm up min(stages - rank - 1, micro-batches): 2 through 4 stages is all fill
    # and drain; flopwise's trainer (and torch.distributed.pipelining's 1F1B) refuse it
    assert check(Layout(pp=4, micro_batch=1), NANO4, 2, fewer_microbatches=True) == 2
    with pytest.raises(LayoutError, match=re.escape("pipeline of 4 stages needs at least 4 micro-batches")):
        check(Layout(pp=4, micro_batch=1), NANO4, 2)
    with pytest.raises(LayoutError, match=re.escape("pipeline of 2 stages needs at least 2 micro-batches")):
        check(Layout(pp=2, vpp=2, micro_batch=1), NANO4, 1, fewer_microbatches=True)  # interleaved


def test_the_first_and_last_stage_may_hold_only_the_embedding_and_the_head():
    """Megatron's account_for_embedding/loss_in_pipeline_split: layers + 2 stages, the ends without a layer; the
    planner's even split puts them there (the trainer runs it: tests/parallel/test_parity.py)."""
    from flopwise.plan.cost import even_split

    for layout in (Layout(pp=2, vpp=3, micro_batch=1), Layout(pp=2, split=(0, 4), micro_batch=1),
                   Layout(pp=3, vpp=2, split=(0, 1, 1, 1, 1, 0), micro_batch=1)):
        check(layout, NANO4, 12)
    assert even_split(4, 6) == (0, 1, 1, 1, 1, 0) and even_split(4, 5) == (0, 1, 1, 1, 1)
    assert even_split(126, 128) == (0,) + (1,) * 126 + (0,)
    assert even_split(126, 64) == (1,) + (2,) * 62 + (1,)  # 128 virtual layers: the same rule at vpp 4
    with pytest.raises(LayoutError, match=re.escape("7 pipeline stages (pp 7 x vpp 1) exceed 4 layers plus")):
        check(Layout(pp=7, micro_batch=1), NANO4, 14)

    # the planner plans them (a fixed pp above the layers; the trainer's split = "auto" picks the even split)
    from flopwise.hardware import get_accelerator
    from flopwise.plan.cost import CostModel
    from flopwise.plan.search import balanced_split, best_split, search
    from flopwise.plan.spec import Cluster, Training

    cluster, training = Cluster(get_accelerator("H100-SXM"), 6), Training(24, software="te")
    plan = search(NANO4, cluster, training, fixed={"pp": 6, "micro_batch": 1}, top=1).plans[0]
    assert (plan.layout.pp, plan.pp_layers) == (6, (0, 1, 1, 1, 1, 0))
    cm = CostModel(NANO4, cluster, training)
    assert balanced_split(cm, Layout(pp=6, micro_batch=1), 24) is None  # never a negative stage
    assert best_split(cm, Layout(pp=6, micro_batch=1)) == (0, 1, 1, 1, 1, 0)
    # the planner's --layout words take an empty end too (which stages may be empty is check_split's)
    assert parse_layout("pp=2,split=0/4")["split"] == (0, 4)
    with pytest.raises(LayoutError, match="each stage's layers = -1: must be >= 0"):
        parse_layout("pp=2,split=-1/5")
    with pytest.raises(LayoutError, match="every stage but the first and the last"):
        check(Layout(pp=3, split=(1, 0, 3), micro_batch=1), NANO4, 12)


def test_vocabulary_not_divisible_by_tp_is_refused_with_the_padded_size():
    with pytest.raises(LayoutError, match=r"must divide the vocabulary \(513\); pad it: model.vocab_size = 514"):
        check(Layout(tp=2), NANO4.replace(vocab_size=513), 8)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        (Layout(dp=2, zero=1, dp_shard=1), "its shard group has one rank (dp = 2, dp_shard = 1)"),  # was plain DP
        (Layout(zero=1), "its shard group has one rank (dp = 1, dp_shard = 0)"),
        (Layout(zero=3), "its shard group has one rank"),
        (Layout(dp=4, dp_shard=2), "dp_shard = 2 shards nothing with zero = 0"),
        (Layout(dp=4, zero=1, dp_shard=3), "dp_shard = 3 must divide dp = 4"),
        (Layout(dp=2, pp=2, zero=2), "with pipeline parallelism use zero <= 1"),
    ],
)
def test_zero_is_never_a_silent_no_op(layout, message):
    with pytest.raises(LayoutError, match=re.escape(message)):
        check(layout, NANO4, 8)


@pytest.mark.parametrize(
    ("layout", "sizes"),
    [
        (Layout(dp=4), {"pp": 1, "dp_replicate": 4, "dp_shard": 1, "tp": 1}),  # replicated DP
        (Layout(dp=4, zero=1), {"pp": 1, "dp_replicate": 1, "dp_shard": 4, "tp": 1}),  # ZeRO over all of dp
        (Layout(dp=4, zero=3, dp_shard=2), {"pp": 1, "dp_replicate": 2, "dp_shard": 2, "tp": 1}),  # hybrid
        (Layout(dp=2, zero=1, pp=2, tp=2), {"pp": 2, "dp_replicate": 1, "dp_shard": 2, "tp": 2}),
    ],
)
def test_accepted_zero_layouts_shard_over_the_mesh_axis_they_name(layout, sizes):
    check(layout, NANO4, 8)
    assert ParallelDims.from_layout(layout, layout.gpus).sizes() == sizes


def test_one_spelling_per_layout():
    assert Layout(tp=1, sp=True).sp is False  # no sequence parallelism without TP
    assert Layout(pp=2, vpp=2).schedule == "interleaved"
    assert Layout(dp=2, zero=1, tp=2, pp=2, micro_batch=2).short() == "tp=2,pp=2,dp=2,zero=1,sp=1,rc=none,mb=2"
    assert Layout(dp=4, zero=3, dp_shard=2, tp=2).describe() == "dp4xtp2-zero3-shard2"
    layout = Layout(pp=2, split=(1, 3), recompute="full", recompute_every=2)
    assert Layout.from_dict(layout.to_dict()) == layout


def test_planner_keys_and_job_config_keys_are_the_same_words(tmp_path):
    fixed = parse_layout("tp=2,pp=2,dp=2,zero=1,sp=off,split=1/3,recompute=full,recompute_every=2,mb=2")
    job = load_config(overrides=[f"parallel.{k}={v!r}" if isinstance(v, str) else f"parallel.{k}={str(v).lower()}"
                                 for k, v in fixed.items() if k not in ("split", "micro_batch")]
                      + ['parallel.split="1,3"', "train.micro_batch=2", "model.layers=4", "train.global_batch=8"])
    layout, microbatches = resolve_layout(job, 8)
    assert layout == Layout(**{**fixed, "micro_batch": 2}) and microbatches == 2


@pytest.mark.parametrize(
    ("sets", "world", "keys"),
    [
        (["parallel.tp=3"], None, "parallel.tp, model.heads, model.kv_heads"),
        (["parallel.dp=3"], None, "train.global_batch, parallel.dp"),
        (["train.micro_batch=3"], None, "train.global_batch, parallel.dp, train.micro_batch"),
        (["parallel.pp=2", "parallel.dp=2", "parallel.zero=2"], None, "parallel.zero, parallel.pp"),
        (['parallel.split="1,2"'], None, "parallel.split, parallel.pp, parallel.vpp"),
        (["parallel.tp=2", "model.seq_len=255", "model.vocab_size=512"], None, "parallel.sp, model.seq_len, parallel.tp"),
        (["parallel.tp=2", "train.seq_len=127", "model.vocab_size=512"], None, "parallel.sp, train.seq_len, parallel.tp"),
        ([], 2, "parallel.pp, parallel.dp, parallel.tp, the process count: --nproc, or torchrun's"),
        (["parallel.pp=3", "parallel.vpp=2", "parallel.microbatches=4", "model.layers=6", "train.global_batch=12"], None,
         "train.global_batch, parallel.dp, parallel.microbatches, parallel.pp"),
        (["parallel.dp=4", "parallel.zero=1", "parallel.dp_shard=3"], None, "parallel.dp_shard, parallel.dp"),
        (["parallel.dp=4", "parallel.dp_shard=2"], None, "parallel.dp_shard, parallel.zero"),
        (["parallel.zero=1"], None, "parallel.zero, parallel.dp, parallel.dp_shard"),
        (["parallel.ep=2", "parallel.dp=2"], None, "parallel.ep, model.experts"),
        (["parallel.pp=2", "parallel.schedule=\"interleaved\""], None, "parallel.schedule, parallel.vpp"),
        (["parallel.recompute_every=2"], None, "parallel.recompute_every, parallel.recompute"),
        (["parallel.pp=20"], None, "parallel.pp, parallel.vpp, model.layers"),
        (["parallel.tp=2", "model.ffn=701", "model.vocab_size=512"], None, "parallel.tp, model.ffn"),
        (["parallel.tp=2", "model.vocab_size=511"], None, "parallel.tp, model.vocab_size"),
        (["parallel.pp=2", "train.global_batch=2", "parallel.dp=2"], None,
         "parallel.pp, train.global_batch, parallel.dp, train.micro_batch"),
    ],
)
def test_a_refused_job_layout_names_its_config_keys(sets, world, keys):
    """The trainer's refusal names the keys to change in the job's own words (the shared check speaks the planner's),
    and every key it names is one the job has."""
    job = load_config(overrides=["train.global_batch=16", *sets], preset="tiny")
    with pytest.raises(LayoutError, match=rf"\(set by {re.escape(keys)}\)") as refused:
        resolve_layout(job, world)
    sections = {"parallel": job.parallel, "train": job.train, "model": job.model_config()}
    for key in job_keys(job, refused.value.keys):
        section, _, name = key.partition(".")
        assert key.startswith("the process count") or hasattr(sections[section], name), key


def test_earlier_config_keys_are_renamed_or_explained():
    job = load_config(overrides=["parallel.pp=2", 'parallel.pp_layers="1,3"', "parallel.sequence_parallel=false",
                                 "model.layers=4"])
    assert (job.parallel.split, job.parallel.sp) == ("1,3", False)
    with pytest.raises(ConfigError, match="parallel.dp_replicate is gone: parallel.dp is the whole"):
        load_config(overrides=["parallel.dp_replicate=2"])
    with pytest.raises(ConfigError, match="parallel.activation_checkpoint is gone: use parallel.recompute"):
        load_config(overrides=['parallel.activation_checkpoint="full"'])


@pytest.mark.parametrize(("text", "message"), [("2,2", "gives 2 stages"), ("1,1,1", "sums to 3"),
                                              ("2,0,2", "at least one"), ("a,b,c", "comma-separated")])
def test_explicit_split_is_checked(text, message):
    with pytest.raises(LayoutError, match=message):
        parse_split(text, layers=4, stages=3)
    assert parse_split("1,2,1", 4, 3) == (1, 2, 1) and parse_split("auto", 4, 3) is None
    assert parse_split("0,4,0", 4, 3) == (0, 4, 0)  # the ends may hold only the embedding and the head


@pytest.mark.parametrize(
    ("sets", "local_batch", "pp", "micro"),
    [
        ({"train.micro_batch": 16}, 8, 1, 8),  # an upper bound: a rank with 8 sequences runs one micro-batch
        ({"train.micro_batch": 2}, 8, 1, 2),
        ({"train.micro_batch": 2}, 8, 2, 2),  # gives 4 >= pp micro-batches: honoured
        ({"train.micro_batch": 16}, 16, 2, 4),  # gives 1 < pp: 2 x pp = 4 micro-batches
        ({"train.micro_batch": 16}, 6, 4, 1),  # 2 x pp = 8 > 6 sequences: one sequence each
        ({"train.micro_batch": 16}, 12, 4, 1),  # 8 does not divide 12: the next count that does (12)
        ({"train.micro_batch": 16, "parallel.microbatches": 8}, 16, 2, 2),
    ],
)
def test_micro_batch_size_per_rank(sets, local_batch, pp, micro):
    job = load_config(overrides=[f"{k}={v}" for k, v in {**sets, "parallel.pp": pp}.items()])
    assert micro_batch_for(job, local_batch) == micro


def test_microbatches_must_divide_the_rank_batch():
    job = load_config(overrides=["train.micro_batch=16", "parallel.microbatches=3", "parallel.pp=2"])
    with pytest.raises(LayoutError, match="microbatches = 3 must divide the 16 sequences per rank"):
        micro_batch_for(job, 16)


@pytest.mark.parametrize(("text", "value"), [("on", True), ("OFF", False), ("yes", True), ("0", False),
                                             ("True", True), (False, False)])
def test_one_boolean_parser(text, value):
    assert parse_bool("x", text) is value


def test_boolean_parser_refuses_other_words():
    with pytest.raises(ConfigError, match="x = 'offf': expected true or false"):
        parse_bool("x", "offf")


@pytest.mark.parametrize("layout", [
    Layout(tp=4, pp=8, dp=32, zero=1, sp=True, recompute="full", recompute_every=4),
    Layout(tp=2, pp=2, schedule="gpipe", micro_batch=8),
    Layout(pp=4, vpp=2),
    Layout(dp=8, zero=3, dp_shard=4, ep=2),
])
def test_a_printed_layout_reads_back(layout):
    """What a plan table prints (Layout.short) is a valid --layout: every=N and a bare schedule name included."""
    assert Layout(**parse_layout(layout.short())) == layout


def test_tensor_parallelism_must_divide_the_shared_expert():
    from flopwise.layout import check
    from flopwise.models.config import get_preset

    moe = get_preset("nano-moe").replace(shared_ffn=48)
    check(Layout(tp=2), moe, 8)  # 48 / 2
    with pytest.raises(LayoutError, match="shared expert's width"):
        check(Layout(tp=2), moe.replace(shared_ffn=49), 8)
