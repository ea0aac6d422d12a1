"""An NVLink domain smaller than the node (H100 PCIe: bridged pairs): groups wider than a pair cross PCIe
(hardware.Accelerator.nvlink_domain_gpus and pcie_bandwidth, spec.Cluster.intra_link, cost.CostModel.bus_bandwidth)."""

import dataclasses

import pytest

from flopwise.errors import ConfigError
from flopwise.hardware import CATALOGUE, GB, NVLINK_BUS_EFFICIENCY, load_accelerator, write_accelerator
from flopwise.layout import Layout
from flopwise.models.config import ModelConfig
from flopwise.plan.cost import CostModel
from flopwise.plan.search import domain_notes
from flopwise.plan.spec import Cluster, Training

PCIE = CATALOGUE["H100-PCIe"]
MODEL = ModelConfig(vocab_size=32000, layers=4, hidden=2048, heads=16, ffn=8192, seq_len=2048, lfa=False, mlp="swiglu")


def test_groups_wider_than_a_bridged_pair_cross_pcie():
    cluster = Cluster(PCIE, 16)  # two nodes of 8
    assert cluster.intra_link(2) == PCIE.link_bandwidth == 300 * GB  # the NVLink bridge
    assert cluster.intra_link(4) == cluster.intra_link(8) == PCIE.pcie_bandwidth == 64 * GB
    cm = CostModel(MODEL, cluster, Training(64, software="te"))
    assert cm.bus_bandwidth(2) == 300 * GB * NVLINK_BUS_EFFICIENCY
    assert cm.bus_bandwidth(8) == 64 * GB * NVLINK_BUS_EFFICIENCY
    assert cm.bus_bandwidth(16, 16) <= 64 * GB * NVLINK_BUS_EFFICIENCY  # the ring's in-node part crosses PCIe too
    given = Cluster(PCIE, 16, intra_node_bw=100 * GB)  # the user's own figure holds for every group
    assert given.intra_link(2) == given.intra_link(8) == 100 * GB
    for name in ("A100-80GB", "H100-SXM", "GB200"):  # NVLink across the node (or a rack): one link for all
        whole = Cluster(CATALOGUE[name], 8)
        assert whole.intra_link(2) == whole.intra_link(8) == CATALOGUE[name].link_bandwidth


def test_tensor_parallelism_beyond_a_pair_is_planned_slower_on_pcie_than_within_one():
    def tp_time(acc, tp):
        cm = CostModel(MODEL, Cluster(acc, 8), Training(64, software="te"))
        return cm.evaluate(Layout(tp=tp, dp=8 // tp, zero=1, micro_batch=1)).breakdown["tp"]

    nvlinked = dataclasses.replace(PCIE, nvlink_domain_gpus=0)  # as it was planned before: NVLink for every group
    assert tp_time(PCIE, 2) == tp_time(nvlinked, 2)
    assert tp_time(PCIE, 4) > 3 * tp_time(nvlinked, 4)  # 300 against 64 GB/s per direction


def test_a_plan_on_bridged_pairs_says_how_its_links_are_costed():
    (said,) = domain_notes(Cluster(PCIE, 8))
    assert said.startswith("H100-PCIe: NVLink joins groups of 2 GPUs only (bridges)") and "64 GB/s" in said
    assert domain_notes(Cluster(PCIE, 8, gpus_per_node=2)) == []  # one pair per node: NVLink throughout
    assert domain_notes(Cluster(PCIE, 8, intra_node_bw=100 * GB)) == []  # the user's figure
    assert domain_notes(Cluster(CATALOGUE["H100-SXM"], 8)) == []


def test_an_accelerator_file_declares_bridged_pairs(tmp_path):
    path = write_accelerator(PCIE, tmp_path / "pcie.toml")
    text = path.read_text()
    assert "nvlink_domain_gpus = 2" in text and "pcie_bandwidth_gbps = 64" in text
    assert load_accelerator(path) == PCIE
    assert "pcie_bandwidth_gbps" not in write_accelerator(CATALOGUE["A100-80GB"], tmp_path / "a.toml").read_text()
    alone = tmp_path / "alone.toml"
    alone.write_text(text.replace("nvlink_domain_gpus = 2\n", ""))
    with pytest.raises(ConfigError, match="pcie_bandwidth_gbps .* give nvlink_domain_gpus too"):
        load_accelerator(alone)
