"""AMD Instinct parts in the catalogue, and the fully connected mesh inside their nodes: a group of g GPUs moves data
over g - 1 direct links (hardware.Accelerator.mesh_links, spec.Cluster.intra_link, CostModel.bus_bandwidth)."""

import dataclasses
import json

import pytest

from flopwise.errors import ConfigError, PlanError
from flopwise.hardware import (
    CALIBRATED,
    CATALOGUE,
    GB,
    get_accelerator,
    load_accelerator,
    match_device_name,
    write_accelerator,
)
from flopwise.layout import Layout
from flopwise.models.config import ModelConfig
from flopwise.plan.cost import NVLINK_BUS_EFFICIENCY, CostModel
from flopwise.plan.search import domain_notes
from flopwise.plan.spec import Cluster, Training

MI300X, MI355X, H100 = CATALOGUE["MI300X"], CATALOGUE["MI355X"], CATALOGUE["H100-SXM"]
MODEL = ModelConfig(vocab_size=32000, layers=4, hidden=4096, heads=32, ffn=14336, seq_len=4096, lfa=False,
                    mlp="swiglu")


def test_the_parts_resolve_by_name_and_as_drivers_write_them():
    assert get_accelerator("mi300x") is MI300X and get_accelerator("MI355X") is MI355X
    assert match_device_name("AMD Instinct MI300X") is MI300X
    assert match_device_name("AMD Instinct MI325X") is CATALOGUE["MI325X"]
    assert match_device_name("AMD Instinct MI300A") is None  # the APU is another part
    # the parts set 41's MLPerf runs checked, by its declared rule; none ran on an MI300X; set 43 took the MI355X out
    assert {"MI325X", "MI350X"} <= CALIBRATED and not {"MI300X", "MI355X"} & CALIBRATED
    assert CATALOGUE["MI325X"].peak_flops == MI300X.peak_flops < MI355X.peak_flops  # the same CDNA 3 compute


def test_what_each_generation_can_run():
    """CDNA 4 takes MXFP8 at the FP8 rate and MXFP4 at its FP4 rate, not NVIDIA's NVFP4; CDNA 3 has no FP4; CDNA 4 has
    no TF32."""
    fp8_block = Training(64, software="te", precision="mxfp8")
    CostModel(MODEL, Cluster(MI355X, 8), fp8_block)
    with pytest.raises(PlanError, match="no block-scaled .*CDNA 4's have"):
        CostModel(MODEL, Cluster(MI300X, 8), fp8_block)
    for acc, said in ((MI300X, "no FP4 tensor cores"), (MI355X, "take the OCP MX formats, not NVIDIA's NVFP4")):
        with pytest.raises(PlanError, match=said):
            CostModel(MODEL, Cluster(acc, 8), Training(64, software="te", precision="nvfp4"))
    CostModel(MODEL, Cluster(MI355X, 8), Training(64, software="te", precision="mxfp4"))
    CostModel(MODEL, Cluster(MI300X, 8), Training(64, software="torch-eager", precision="tf32"))
    with pytest.raises(PlanError):
        CostModel(MODEL, Cluster(MI355X, 8), Training(64, software="torch-eager", precision="tf32"))


def test_a_group_in_a_mesh_node_runs_over_one_link_per_other_member():
    cluster = Cluster(MI300X, 16)
    assert [cluster.intra_link(g, g) / GB for g in (2, 4, 8)] == [64, 192, 448]
    assert cluster.intra_link(8, 2) == 64 * GB  # a point-to-point send, whatever the span
    assert Cluster(MI300X, 4, gpus_per_node=4).intra_link(8, 8) == 3 * 64 * GB  # only the node's GPUs are linked
    # a given link is all of a GPU's links together, shared as the catalogue's are (a calibrated one too)
    assert Cluster(MI300X, 8, intra_node_bw=350 * GB).intra_link(2, 2) == pytest.approx(50 * GB)
    assert Cluster(MI300X, 8, intra_node_bw=350 * GB).intra_link(8, 8) == pytest.approx(350 * GB)
    switched = Cluster(H100, 8)
    assert switched.intra_link(2, 2) == switched.intra_link(8, 8) == H100.link_bandwidth  # NVSwitch: any pair
    # a plan that puts more GPUs in a "node" than the mesh joins gets no more than all of a GPU's links
    assert Cluster(MI300X, 16, gpus_per_node=16).intra_link(16, 16) == MI300X.link_bandwidth


def test_the_cost_model_costs_each_collective_over_its_own_links():
    cm = CostModel(MODEL, Cluster(MI300X, 16), Training(64, software="torch-compile"))
    bus = NVLINK_BUS_EFFICIENCY * GB
    assert cm.bus_bandwidth(2, 2) == pytest.approx(64 * bus)  # TP 2
    assert cm.bus_bandwidth(8, 8) == pytest.approx(448 * bus)  # TP 8 or DP 8 in a node
    assert cm.bus_bandwidth(8) == pytest.approx(64 * bus)  # a pipeline or ring-attention send
    assert cm.bus_bandwidth(8, members=8) == pytest.approx(448 * bus)  # an all-to-all
    # the measurement the mesh comes from: all_reduce bus bandwidth of 47.7 GB/s on 2 MI300X, 312.9 on 8 (6.6x)
    assert cm.bus_bandwidth(8, 8) / cm.bus_bandwidth(2, 2) == pytest.approx(312.9 / 47.7, rel=0.1)
    tp2, tp8 = cm.layer_cost(2, True, 1, "none"), cm.layer_cost(8, True, 1, "none")
    nvidia = CostModel(MODEL, Cluster(H100, 16), Training(64, software="torch-compile"))
    assert tp2.tp / tp8.tp > 2 * nvidia.layer_cost(2, True, 1, "none").tp / nvidia.layer_cost(8, True, 1, "none").tp


def test_data_parallelism_inside_a_mesh_node_pays_for_small_groups():
    """DP 2 under TP 4 reduces its gradients over one link; DP 8 over all seven."""
    cm = CostModel(MODEL, Cluster(MI300X, 8), Training(64, software="torch-compile"))
    small = cm.evaluate(Layout(tp=4, dp=2, sp=True, micro_batch=1))
    wide = cm.evaluate(Layout(tp=1, dp=8, micro_batch=1))
    switched = CostModel(MODEL, Cluster(dataclasses.replace(MI300X, name="switched", mesh_links=0), 8),
                         Training(64, software="torch-compile"))
    assert small.breakdown["dp"] > switched.evaluate(Layout(tp=4, dp=2, sp=True, micro_batch=1)).breakdown["dp"]
    assert wide.breakdown["dp"] == pytest.approx(switched.evaluate(Layout(tp=1, dp=8, micro_batch=1)).breakdown["dp"])


def test_a_plan_on_a_mesh_says_what_small_groups_cost():
    (note,) = domain_notes(Cluster(MI300X, 16))
    assert note.startswith("MI300X: its fabric links each pair") and "a pair (and every pipeline or ring-attention " \
        "send) at 64 GB/s per direction, 8 GPUs at 448; groups smaller than the node move data slower" in note
    assert domain_notes(Cluster(H100, 16)) == []
    (own,) = domain_notes(Cluster(MI300X, 16, intra_node_bw=350 * GB))  # the user's own links, shared the same way
    assert "at 50 GB/s per direction, 8 GPUs at 350" in own
    (pair,) = domain_notes(Cluster(MI300X, 2))  # a plan on two GPUs runs over one link: said, without the comparison
    assert "a pair (and every pipeline or ring-attention send) at 64 GB/s per direction, 2 GPUs at 64" in pair
    assert "smaller" not in pair and domain_notes(Cluster(MI300X, 1)) == []


def test_an_accelerator_file_declares_a_mesh(tmp_path):
    path = write_accelerator(MI355X, tmp_path / "mi355x.toml")
    assert "mesh_links = 7" in path.read_text()
    assert load_accelerator(path) == MI355X
    text = path.read_text()
    bad = tmp_path / "bad.toml"
    for value in ("2.5", "-1", "true"):
        bad.write_text(text.replace("mesh_links = 7", f"mesh_links = {value}"))
        with pytest.raises(ConfigError, match=f"mesh_links = {value.capitalize() if value == 'true' else value}"
                                              r" must be a whole number \(0: no mesh\)"):
            load_accelerator(bad)
    bad.write_text(text + "nvlink_domain_gpus = 2\n")
    with pytest.raises(ConfigError, match="describe different fabrics"):
        load_accelerator(bad)
    bad.write_text(text.replace("mesh_links = 7", "mesh_links = 0"))  # 0: a switched fabric
    assert load_accelerator(bad).mesh_links == 0
    bad.write_text(text.replace("mesh_links = 7", "peer_bandwidth_gbps = 76.5"))  # the key's first form
    with pytest.raises(ConfigError, match="peer_bandwidth_gbps was renamed: give mesh_links"):
        load_accelerator(bad)
    bad.write_text(text.replace("block_scaled_fp8 = true", "block_scaled_fp8 = false"))
    with pytest.raises(ConfigError, match="run no FP4 precision"):  # FP4 that takes neither NVFP4 nor MX scales
        load_accelerator(bad)


def test_the_plan_s_json_gives_a_pair_s_link(capsys):
    from tests.cli_run import run_cli

    for gpu, pair in (("MI300X", 64), ("H100-PCIe", 300), ("H100-SXM", 450)):  # mesh, bridged pair, switch
        code, out, _ = run_cli(capsys, "plan", "--preset", "tiny", "--gpu", gpu, "--gpus", 8, "--global-batch", 8,
                               "--top", 1, "--json")
        assert code == 0 and json.loads(out)["cluster"]["intra_node_pair_GBps"] == pair


def test_calibrating_a_mesh_part_s_link_moves_every_group():
    """A fitted link_bandwidth is the GPU's links together, so it moves a pair's link as much as the node's: the fit
    is not blind to a mesh (its forward difference is not 0)."""
    faster = dataclasses.replace(MI300X, link_bandwidth=2 * MI300X.link_bandwidth)
    assert Cluster(faster, 8).intra_link(2, 2) == 2 * Cluster(MI300X, 8).intra_link(2, 2)
    assert Cluster(faster, 8).intra_link(8, 8) == 2 * Cluster(MI300X, 8).intra_link(8, 8)


SHORT = dataclasses.replace(MODEL, seq_len=256)  # blocks too short to hide the traffic


def mesh_and_switched(gpus, layout):
    training = Training(64, software="torch-compile")
    return [CostModel(SHORT, Cluster(acc, gpus), training).evaluate(layout)
            for acc in (MI300X, dataclasses.replace(MI300X, name="switched", mesh_links=0))]


@pytest.mark.parametrize("gpus, layout, moved, low, high", [
    (8, Layout(tp=4, dp=2, sp=True, zero=3, micro_batch=1), "dp", 5, 9),  # FSDP over 2 of a node's GPUs: one link
    (8, Layout(tp=1, dp=2, pp=4, micro_batch=8), "pp", 4, 7),  # pipeline sends inside the node: one link each
    # DP across 2 nodes, 4 ranks per node: their 3 links (150 GB/s of bus) bind below their 4 NICs (200)
    (16, Layout(tp=2, dp=8, sp=True, micro_batch=1), "dp", 1.3, 200 / 150),
])
def test_every_collective_on_a_mesh_runs_over_its_own_links(gpus, layout, moved, low, high):
    """Against the same part as a switched fabric: the groups smaller than the node pay for their few links (up to
    7x, less each call's latency)."""
    mesh, switched = mesh_and_switched(gpus, layout)
    assert switched.breakdown[moved] > 0
    assert low <= mesh.breakdown[moved] / switched.breakdown[moved] <= high * 1.0001


def test_ring_attention_sends_each_chunk_over_one_link():
    """cp 4 inside a node: each of the cp - 1 steps sends K and V to one neighbour over one link (not the three a
    4-member all-reduce would use), less what the step's attention hides."""
    cm = CostModel(SHORT, Cluster(MI300X, 8), Training(64, software="torch-compile"))
    cp, mb = 4, 8
    tokens = SHORT.seq_len * mb / cp
    kv = 2 * tokens * SHORT.kv_heads * SHORT.head_dim * 2
    attn, bw, lat = cm.attention_time(1, mb, cp), 64 * GB * NVLINK_BUS_EFFICIENCY, cm.latency(cp)
    step_f = max(0.0, kv / bw + lat - attn / cp)
    step_b = max(0.0, 2 * kv / bw + lat - 2 * attn / cp)
    assert cm.layer_cost(1, False, mb, "none", cp=cp).cp == pytest.approx((cp - 1) * (step_f + step_b))
    mesh, switched = mesh_and_switched(8, Layout(tp=1, dp=2, cp=cp, micro_batch=mb))
    assert mesh.breakdown["cp"] > switched.breakdown["cp"] > 0


def test_a_cross_node_ring_is_bound_by_the_links_its_node_s_members_share():
    cm = CostModel(MODEL, Cluster(MI300X, 16), Training(64, software="torch-compile"))
    bus = NVLINK_BUS_EFFICIENCY * GB
    # 2 ranks per node (span 16, 4 ranks): one link inside the node, below the two NICs' 100 GB/s
    assert cm.bus_bandwidth(16, 4) == pytest.approx(min(2 * 50 * cm.constants.network_efficiency, 64 * 0.78) * GB)
    assert cm.bus_bandwidth(16, 16) == pytest.approx(min(8 * 50 * cm.constants.network_efficiency * GB, 448 * bus))


def test_an_expert_all_to_all_in_a_mesh_node_runs_over_every_link():
    """Every pair of the expert-parallel group exchanges tokens at once: 8 GPUs use all seven links of each."""
    from flopwise.plan.experts import moe_layer_time

    moe = dataclasses.replace(MODEL, experts=8, top_k=2)
    layout = Layout(dp=8, ep=8, micro_batch=1)
    mesh = CostModel(moe, Cluster(MI300X, 8), Training(64, software="torch-compile"))
    switched = CostModel(moe, Cluster(dataclasses.replace(MI300X, name="switched", mesh_links=0), 8),
                         Training(64, software="torch-compile"))
    assert moe_layer_time(mesh, layout, 1.0)[1] == pytest.approx(moe_layer_time(switched, layout, 1.0)[1])
    pair = Layout(dp=8, ep=2, micro_batch=1)  # two members: one link
    assert moe_layer_time(mesh, pair, 1.0)[1] > 3 * moe_layer_time(switched, pair, 1.0)[1]
