"""AMD Instinct parts in the catalogue, and the fully connected mesh inside their nodes: a group of g GPUs moves data
over g - 1 direct links (hardware.Accelerator.peer_bandwidth, spec.Cluster.intra_link, CostModel.bus_bandwidth)."""

import dataclasses

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
    # the parts set 41's MLPerf runs checked, by its declared rule; none ran on an MI300X
    assert {"MI325X", "MI350X", "MI355X"} <= CALIBRATED and "MI300X" not in CALIBRATED
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
    assert Cluster(MI300X, 8, intra_node_bw=100 * GB).intra_link(2, 2) == 100 * GB  # a given link holds for all
    switched = Cluster(H100, 8)
    assert switched.intra_link(2, 2) == switched.intra_link(8, 8) == H100.link_bandwidth  # NVSwitch: any pair


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
    switched = CostModel(MODEL, Cluster(dataclasses.replace(MI300X, name="switched", peer_bandwidth=0.0), 8),
                         Training(64, software="torch-compile"))
    assert small.breakdown["dp"] > switched.evaluate(Layout(tp=4, dp=2, sp=True, micro_batch=1)).breakdown["dp"]
    assert wide.breakdown["dp"] == pytest.approx(switched.evaluate(Layout(tp=1, dp=8, micro_batch=1)).breakdown["dp"])


def test_a_plan_on_a_mesh_says_what_small_groups_cost():
    (note,) = domain_notes(Cluster(MI300X, 16))
    assert note.startswith("MI300X: its fabric links each pair") and "a pair: 64 GB/s, 8: 448" in note
    assert domain_notes(Cluster(H100, 16)) == []
    assert domain_notes(Cluster(MI300X, 16, intra_node_bw=300 * GB)) == []  # the user's own link
    assert domain_notes(Cluster(MI300X, 2)) == []  # a pair is all there is


def test_an_accelerator_file_declares_a_mesh(tmp_path):
    path = write_accelerator(MI355X, tmp_path / "mi355x.toml")
    assert "peer_bandwidth_gbps = 76.5" in path.read_text()
    assert load_accelerator(path) == MI355X
    text = path.read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("peer_bandwidth_gbps = 76.5", "peer_bandwidth_gbps = 600.0"))
    with pytest.raises(ConfigError, match="one link of a mesh, at most the GPU's link_bandwidth_gbps"):
        load_accelerator(bad)
    bad.write_text(text + "nvlink_domain_gpus = 2\n")
    with pytest.raises(ConfigError, match="describe different fabrics"):
        load_accelerator(bad)


def test_an_expert_all_to_all_in_a_mesh_node_runs_over_every_link():
    """Every pair of the expert-parallel group exchanges tokens at once: 8 GPUs use all seven links of each."""
    from flopwise.plan.experts import moe_layer_time

    moe = dataclasses.replace(MODEL, experts=8, top_k=2)
    layout = Layout(dp=8, ep=8, micro_batch=1)
    mesh = CostModel(moe, Cluster(MI300X, 8), Training(64, software="torch-compile"))
    switched = CostModel(moe, Cluster(dataclasses.replace(MI300X, name="switched", peer_bandwidth=0.0), 8),
                         Training(64, software="torch-compile"))
    assert moe_layer_time(mesh, layout, 1.0)[1] == pytest.approx(moe_layer_time(switched, layout, 1.0)[1])
    pair = Layout(dp=8, ep=2, micro_batch=1)  # two members: one link
    assert moe_layer_time(mesh, pair, 1.0)[1] > 3 * moe_layer_time(switched, pair, 1.0)[1]
