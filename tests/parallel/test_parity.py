"""Correctness bar: the same seed and data give the single-process loss curve under every layout."""

import shutil

import pytest

from tests.parallel.harness import run_layout

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
}
# every layout with LFA on; the variants on a representative subset (keeps the suite a few minutes)
CASES = [(name, "lfa-on") for name in LAYOUTS] + [
    ("tp2-sp", "lfa-off"), ("pp2-1f1b", "lfa-off"), ("dp2xtp2", "lfa-off"),
    ("tp2-sp", "ac-full"), ("pp2xtp2", "ac-every-2"), ("zero3-dp2", "ac-full"),
]


@pytest.fixture(scope="module")
def references(nano_shards):
    return {v: run_layout(nano_shards, 1, VARIANTS[v], steps=STEPS) for v in ("lfa-on", "lfa-off")}


def assert_same_curve(got, ref, steps=None):
    steps = steps or sorted(ref)
    for step in steps:
        assert abs(got[step] - ref[step]) <= 1e-4 * abs(ref[step]), (step, got[step], ref[step])


@pytest.mark.parametrize(("layout", "variant"), CASES, ids=[f"{a}-{b}" for a, b in CASES])
def test_layout_matches_single_process_loss(nano_shards, references, layout, variant):
    world, overrides = LAYOUTS[layout]
    ref = references["lfa-off" if variant == "lfa-off" else "lfa-on"]
    got = run_layout(nano_shards, world, overrides + VARIANTS[variant], steps=STEPS)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert ref[STEPS] < ref[1] - 0.3  # the curve moves: parity is not trivially met
    assert_same_curve(got, ref)


def _drop_last_checkpoint(out):
    from flopwise.train.checkpoint import checkpoints_dir, step_dirs

    shutil.rmtree(step_dirs(out)[-1])
    (checkpoints_dir(out) / "latest").unlink()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("save_layout", "resume_layout"),
    [("dp2xtp2", "pp2xdp2-zero1"), ("pp2-interleaved", None), ("zero3-dp2", "tp2-sp")],
    ids=["dp2xtp2->pp2xdp2", "pp2-interleaved->single", "zero3->tp2"],
)
def test_resharded_resume_continues_the_curve(nano_shards, references, tmp_path, save_layout, resume_layout):
    out = str(tmp_path / "run")
    world, overrides = LAYOUTS[save_layout]
    run_layout(nano_shards, world, overrides + ["checkpoint.every=5"], steps=STEPS, out=out)
    _drop_last_checkpoint(out)  # pretend the run stopped at step 5
    world, overrides = LAYOUTS[resume_layout] if resume_layout else (1, [])
    got = run_layout(nano_shards, world, overrides + ["checkpoint.every=5"], steps=STEPS, out=out, resume=True)
    assert sorted(got) == list(range(6, STEPS + 1))
    assert_same_curve(got, references["lfa-on"], steps=range(6, STEPS + 1))
