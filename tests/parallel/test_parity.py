"""Correctness bar: the same seed and data give the single-process loss curve under every layout."""

import json
import os
import shutil

import pytest

from tests.parallel.harness import Run, losses_of, run_batch, run_layout, selected_params

STEPS = 10
pytestmark = pytest.mark.distributed

LAYOUTS = {
    "dp2": (2, ["parallel.dp=2"]),
    "zero1-dp2": (2, ["parallel.dp=2", "parallel.zero=1"]),
    "zero2-dp2": (2, ["parallel.dp=2", "parallel.zero=2"]),
    "zero3-dp2": (2, ["parallel.dp=2", "parallel.zero=3"]),
    "tp2-sp": (2, ["parallel.tp=2"]),
    "tp2-no-sp": (2, ["parallel.tp=2", "parallel.sp=false"]),
    "pp2-1f1b": (2, ["parallel.pp=2"]),
    "pp2-gpipe": (2, ["parallel.pp=2", 'parallel.schedule="gpipe"']),
    "pp2-non-uniform": (2, ["parallel.pp=2", 'parallel.split="1,3"']),
    "pp2-interleaved": (2, ["parallel.pp=2", "parallel.vpp=2"]),
    # the first and the last of 6 stages hold only the embedding and only the head (Megatron's
    # account_for_embedding/loss_in_pipeline_split)
    "pp2-interleaved-embedding-and-head-stages": (2, ["parallel.pp=2", "parallel.vpp=3", 'parallel.split="0,1,1,1,1,0"']),
    "pp2-embedding-only-first-stage": (2, ["parallel.pp=2", 'parallel.split="0,4"']),  # not what split=auto picks
    "dp2xtp2": (4, ["parallel.dp=2", "parallel.tp=2"]),
    "pp2xtp2": (4, ["parallel.pp=2", "parallel.tp=2"]),
    "pp2xdp2-zero1": (4, ["parallel.pp=2", "parallel.dp=2", "parallel.zero=1"]),
    "hsdp-2x2-zero3": (4, ["parallel.dp=4", "parallel.dp_shard=2", "parallel.zero=3"]),
    "tp2xzero3": (4, ["parallel.tp=2", "parallel.dp=2", "parallel.zero=3"]),
}
VARIANTS = {
    "lfa-on": [],
    "lfa-off": ["model.lfa=false"],
    "ac-full": ['parallel.recompute="full"'],
    "ac-every-2": ['parallel.recompute="full"', "parallel.recompute_every=2"],
    "ac-op": ['parallel.recompute="op"'],
}
# every layout with LFA on; the variants on a representative subset (keeps the suite a few minutes)
CASES = [(name, "lfa-on") for name in LAYOUTS] + [
    ("tp2-sp", "lfa-off"), ("pp2-1f1b", "lfa-off"), ("dp2xtp2", "lfa-off"),
    ("tp2-sp", "ac-full"), ("pp2xtp2", "ac-every-2"), ("zero3-dp2", "ac-full"), ("tp2-sp", "ac-op"),
]


SAVE_EVERY = 5
# the resharded-resume tests continue these runs (the parity runs of those layouts, checkpointed every 5 steps)
RESUMES = [("dp2xtp2", "pp2xdp2-zero1"), ("pp2-interleaved", None), ("zero3-dp2", "tp2-sp")]
RESUME_IDS = ["dp2xtp2->pp2xdp2", "pp2-interleaved->single", "zero3->tp2"]
SAVED = {save for save, _ in RESUMES}


@pytest.fixture(scope="module")
def references(nano_shards):
    return {v: run_layout(nano_shards, 1, VARIANTS[v], steps=STEPS) for v in ("lfa-on", "lfa-off")}


def _case_run(layout, variant, out) -> Run:
    world, overrides = LAYOUTS[layout]
    saves = variant == "lfa-on" and layout in SAVED
    return Run(f"{layout}-{variant}", world, (*overrides, *VARIANTS[variant],
                                               *([f"checkpoint.every={SAVE_EVERY}"] if saves else [])), STEPS, str(out))


@pytest.fixture(scope="module")
def layout_runs(nano_shards, request, tmp_path_factory):
    """The runs of the selected parity tests (and of the layouts the selected resume tests continue), one
    spawned process group per world size: {case: (losses or error, run directory)}."""
    cases = [(p["layout"], p["variant"]) for p in selected_params(request, "test_layout_matches_single_process_loss")]
    cases += [(p["save_layout"], "lfa-on") for p in selected_params(request, "test_resharded_resume_continues_the_curve")]
    cases += [(p["layout"], "lfa-on")
              for p in selected_params(request, "test_a_pipeline_sets_the_plan_beside_its_busiest_rank")]
    runs = [_case_run(layout, variant, tmp_path_factory.mktemp(f"{layout}-{variant}"))
            for layout, variant in dict.fromkeys(cases)]
    results = run_batch(nano_shards, runs)
    return {run.key: (results[run.key], run.out) for run in runs}


def assert_same_curve(got, ref, steps=None):
    steps = steps or sorted(ref)
    for step in steps:
        assert abs(got[step] - ref[step]) <= 1e-4 * abs(ref[step]), (step, got[step], ref[step])


@pytest.mark.parametrize(("layout", "variant"), CASES, ids=[f"{a}-{b}" for a, b in CASES])
def test_layout_matches_single_process_loss(references, layout_runs, layout, variant):
    ref = references["lfa-off" if variant == "lfa-off" else "lfa-on"]
    got = losses_of({k: v for k, (v, _) in layout_runs.items()}, f"{layout}-{variant}")
    assert sorted(got) == list(range(1, STEPS + 1))
    assert ref[STEPS] < ref[1] - 0.3  # the curve moves: parity is not trivially met
    assert_same_curve(got, ref)


@pytest.mark.parametrize("layout", ["pp2-embedding-only-first-stage"])
def test_a_pipeline_sets_the_plan_beside_its_busiest_rank(layout_runs, layout):
    """On a CPU each rank's clock sees only its own stages' work, and the plan's busy time is the busiest stage's: the
    record compares it with the busiest rank's time (here rank 1, with every layer; rank 0 holds only the embedding)."""
    _, out = layout_runs[f"{layout}-lfa-on"]
    with open(os.path.join(out, "metrics-rank0.jsonl")) as fh:
        record = [r for r in map(json.loads, fh) if r.get("event") == "plan_vs_measured"][-1]
    by_rank = record["measured_step_s_by_rank"]
    assert record["step_clock"] == "cpu" and len(by_rank) == 2
    assert record["measured_step_s"] == max(by_rank) == by_rank[1] > 2 * by_rank[0]


def _drop_last_checkpoint(out):
    from flopwise.train.checkpoint import checkpoints_dir, step_dirs

    shutil.rmtree(step_dirs(out)[-1])
    (checkpoints_dir(out) / "latest").unlink()


@pytest.fixture(scope="module")
def resumed_runs(nano_shards, layout_runs, request, tmp_path_factory):
    """Each selected resume: a copy of the saved run without its last checkpoint (as if it stopped at step 5),
    resumed under another layout; one spawned process group per world size."""
    runs = []
    for p in selected_params(request, "test_resharded_resume_continues_the_curve"):
        save, resume = p["save_layout"], p["resume_layout"]
        losses, saved = layout_runs[f"{save}-lfa-on"]
        out = tmp_path_factory.mktemp(f"resume-{save}") / "run"
        if isinstance(losses, Exception):  # the saving run failed: say so in the resume test
            runs.append((f"{save}->{resume}", losses))
            continue
        shutil.copytree(saved, out)
        _drop_last_checkpoint(out)
        world, overrides = LAYOUTS[resume] if resume else (1, [])
        runs.append((f"{save}->{resume}", Run(f"{save}->{resume}", world, (*overrides, f"checkpoint.every={SAVE_EVERY}"),
                                               STEPS, str(out), resume=True)))
    results = run_batch(nano_shards, [run for _, run in runs if isinstance(run, Run)])
    return {key: run if isinstance(run, Exception) else results[key] for key, run in runs}


@pytest.mark.slow
@pytest.mark.parametrize(("save_layout", "resume_layout"), RESUMES, ids=RESUME_IDS)
def test_resharded_resume_continues_the_curve(references, layout_runs, resumed_runs, save_layout, resume_layout):
    saved = losses_of({k: v for k, (v, _) in layout_runs.items()}, f"{save_layout}-lfa-on")
    assert_same_curve(saved, references["lfa-on"])  # the run that was saved is the single-process curve
    got = losses_of(resumed_runs, f"{save_layout}->{resume_layout}")
    assert sorted(got) == list(range(SAVE_EVERY + 1, STEPS + 1))
    assert_same_curve(got, references["lfa-on"], steps=range(SAVE_EVERY + 1, STEPS + 1))
