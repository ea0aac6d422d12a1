"""Latent attention (model.kv_lora_rank) with a leading dense block (model.dense_layers) under tensor parallelism
(the query and key-value up projections cut by heads, the down projections and latent norms whole with their
gradients all-reduced) and under a pipeline whose first stage holds the dense block: the same losses as one process."""

import pytest

from tests.parallel.harness import Run, losses_of, run_batch, run_layout, selected_params
from tests.parallel.test_parity import assert_same_curve

STEPS = 3
# nano-moe (2 blocks, 4 experts) with latent attention on 4 heads of 16 + 8 rotated dims, the first block dense
LATENT = ["model.lfa=false", "model.kv_heads=4", "model.kv_lora_rank=16", "model.q_lora_rank=24",
          "model.rope_head_dim=8", "model.dense_layers=1", "model.dense_ffn=96", "model.shared_ffn=32"]
LAYOUTS = {
    "tp2-sp": (2, ["parallel.tp=2"]),
    "tp2-no-q-latent": (2, ["parallel.tp=2", "parallel.sp=false", "model.q_lora_rank=0"]),
    "pp2": (2, ["parallel.pp=2"]),
}


@pytest.fixture(scope="module")
def references(nano_shards, request):
    wanted = {p["layout"] for p in selected_params(request, "test_latent_attention_layout_matches_one_process")}
    no_q = ["model.q_lora_rank=0"] if "tp2-no-q-latent" in wanted else []
    out = {"q": run_layout(nano_shards, 1, LATENT, steps=STEPS, preset="nano-moe")}
    if no_q:
        out["no-q"] = run_layout(nano_shards, 1, [*LATENT, *no_q], steps=STEPS, preset="nano-moe")
    return out


@pytest.fixture(scope="module")
def runs(nano_shards, request, tmp_path_factory):
    batch = []
    for p in selected_params(request, "test_latent_attention_layout_matches_one_process"):
        world, overrides = LAYOUTS[p["layout"]]
        batch.append(Run(p["layout"], world, (*LATENT, *overrides), STEPS, str(tmp_path_factory.mktemp(p["layout"])),
                         preset="nano-moe"))
    return run_batch(nano_shards, batch)


@pytest.mark.distributed
@pytest.mark.parametrize("layout", ["tp2-sp", pytest.param("tp2-no-q-latent", marks=pytest.mark.slow),
                                    pytest.param("pp2", marks=pytest.mark.slow)])
def test_latent_attention_layout_matches_one_process(references, runs, layout):
    """Steps 2-3 depend on every gradient of steps 1-2, the down projections' all-reduced ones among them."""
    reference = references["no-q" if layout == "tp2-no-q-latent" else "q"]
    got = losses_of(runs, layout)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert reference[STEPS] < reference[1] - 0.1  # the curve moves within the steps compared
    assert_same_curve(got, reference)
