import dataclasses

import pytest

from flopwise import hardware
from flopwise.errors import ConfigError
from flopwise.hardware import (
    CATALOGUE,
    cpu_accelerator,
    detect,
    get_accelerator,
    load_accelerator,
    match_device_name,
    sustained_fraction,
)


def test_catalogue_has_the_datasheet_figures():
    assert {"V100-32GB", "A100-40GB", "A100-80GB", "H100-SXM", "H100-PCIe", "H200"} <= set(CATALOGUE)
    assert get_accelerator("a100-80gb").peak_flops == 312e12
    assert get_accelerator("H100").peak_flops == 989e12
    assert CATALOGUE["H200"].memory_bytes == 143771 * 2**20  # nvidia-smi memory.total, MiB


@pytest.mark.parametrize(
    ("name", "entry"),
    [("NVIDIA H100 80GB HBM3", "H100-SXM"), ("NVIDIA H100 PCIe", "H100-PCIe"), ("NVIDIA A100-SXM4-40GB", "A100-40GB"),
     ("NVIDIA A100-SXM4-80GB", "A100-80GB"), ("NVIDIA H200", "H200"), ("Tesla V100-SXM2-32GB", "V100-32GB")],
)
def test_cuda_device_names_map_to_catalogue(name, entry):
    assert match_device_name(name) is CATALOGUE[entry]


def test_cpu_peak_is_measured_and_labelled():
    cpu = detect("cpu")
    assert cpu is cpu_accelerator() and cpu.measured and cpu.peak_flops > 1e8
    assert cpu.peak_label == "measured matmul peak"
    # the planner's GEMM rate on a CPU is the run's median, not the burst that set the peak
    assert 0.0 < cpu.gemm_efficiency <= 1.0


def test_the_cpu_entry_takes_the_best_rate_as_peak_and_the_sustained_fraction_as_gemm_efficiency(monkeypatch):
    seen = []

    def fraction(rates):
        seen.append(list(rates))
        return 0.5

    monkeypatch.setattr(hardware, "sustained_fraction", fraction)
    monkeypatch.setattr(hardware, "attention_rate", lambda: 0.25 * max(seen[0]))
    monkeypatch.setattr(hardware, "op_overhead", lambda: 7e-6)
    cpu = hardware._cpu_accelerator.__wrapped__(64, 0.0, 1)  # no time at all: still a few timings
    assert cpu.gemm_efficiency == 0.5 and cpu.op_overhead_s == 7e-6
    assert len(seen[0]) >= hardware.MIN_GEMM_TIMINGS and cpu.peak_flops == max(seen[0])
    # the attention's measured rate over the same peak, capped at 1 (a burst of attention cannot beat the best GEMM)
    assert cpu.attention_efficiency == pytest.approx(0.25)
    monkeypatch.setattr(hardware, "attention_rate", lambda: 3.0 * max(seen[0]))
    assert hardware._cpu_accelerator.__wrapped__(64, 0.0, 1).attention_efficiency == 1.0


def test_measurements_of_one_cpu_merge_into_one_accelerator():
    """Runs and ranks each time the CPU at start-up: the planner gets one accelerator, every figure a median, each
    efficiency a median rate, a figure an older record lacks (0) left out, and for a run's ranks the best peak."""
    cpu = hardware.Accelerator("CPU", 1e11, 16e9, 20e9, 2e9, measured=True, gemm_efficiency=0.8,
                               memory_efficiency=1.0, attention_efficiency=0.3, op_overhead_s=5e-6)
    accs = [cpu,
            dataclasses.replace(cpu, peak_flops=1.2e11, gemm_efficiency=0.7, attention_efficiency=0.2, op_overhead_s=0),
            dataclasses.replace(cpu, peak_flops=1.1e11, gemm_efficiency=0.9, attention_efficiency=0.0,
                                memory_bandwidth=30e9, op_overhead_s=7e-6)]
    one = hardware.merge_measured(accs)
    assert one.peak_flops == pytest.approx(1.1e11) and one.memory_bandwidth == pytest.approx(20e9)
    assert one.gemm_efficiency * one.peak_flops == pytest.approx(0.84e11)  # rates 0.8, 0.84, 0.99 (x 1e11)
    assert one.attention_efficiency * one.peak_flops == pytest.approx(0.27e11)  # 0.30 and 0.24: the 0 left out
    assert one.op_overhead_s == pytest.approx(6e-6)
    ranks = hardware.merge_measured(accs, best_peak=True)
    assert ranks.peak_flops == 1.2e11 and ranks.memory_bandwidth == 30e9
    assert ranks.gemm_efficiency * ranks.peak_flops == pytest.approx(0.84e11)  # the sustained rate stays the median
    assert hardware.merge_measured([cpu]) == cpu
    with pytest.raises(ConfigError, match="different accelerators"):
        hardware.merge_measured([cpu, CATALOGUE["H100-SXM"]])


def test_a_start_up_timing_that_fails_leaves_the_default_not_a_failed_start(monkeypatch, caplog):
    def fails():
        raise RuntimeError("not implemented for this build")

    monkeypatch.setattr(hardware, "attention_rate", fails)
    monkeypatch.setattr(hardware, "op_overhead", fails)
    cpu = hardware._cpu_accelerator.__wrapped__(64, 0.0, 1)
    assert cpu.peak_flops > 0 and cpu.attention_efficiency == 0.0 and cpu.op_overhead_s == 0.0
    assert "could not time the attention rate" in caplog.text and "could not time the host time per op" in caplog.text


def test_the_cpu_host_time_per_op_is_a_training_steps_time_over_its_ops(monkeypatch):
    import torch

    with torch.inference_mode():  # callers may hold autograd off
        assert 0 < hardware.op_overhead(seconds=0.0) < 1e-3
    from flopwise import opcount

    monkeypatch.setattr(hardware, "_timed_rates", lambda work, flops, seconds: [100.0, 50.0, 200.0])  # calls / s
    monkeypatch.setattr(opcount, "count_ops", lambda forward: (30, 70))
    assert hardware.op_overhead() == pytest.approx(0.01 / 100)  # the median call's time over its 100 ops


def test_the_cpu_attention_rate_is_timed_forward_and_backward_wherever_it_is_called():
    """The start-up timing runs a backward, so it must work where the caller holds autograd off (generation runs
    under inference mode), and it counts the FLOPs the cost model counts for the same shape."""
    import torch

    with torch.inference_mode():
        held_off = hardware.attention_rate(seconds=0.0)
    with torch.no_grad():
        assert hardware.attention_rate(seconds=0.0) > 0
    assert held_off > 0
    calls = []

    def timed(work, flops, seconds):
        work()
        calls.append(flops)
        return [2.0, 1.0, 4.0]

    from unittest import mock

    with mock.patch.object(hardware, "_timed_rates", timed):
        assert hardware.attention_rate() == 2.0  # the median, not the best
    batch, heads, _, seq, head_dim = hardware.ATTENTION_PROBE
    forward = 4.0 * seq * seq * head_dim * heads * batch / 2  # causal: half the scores
    assert calls == [pytest.approx(forward * 3.5)]  # backward = 2.5 x forward


def test_sustained_fraction_is_the_median_over_the_best():
    assert sustained_fraction([1.0, 2.0, 4.0]) == pytest.approx(0.5)
    assert sustained_fraction([3.0, 3.0]) == 1.0
    assert sustained_fraction([0.0, -1.0, 2.0, 1.0]) == pytest.approx(0.75)  # failed timings are left out
    assert sustained_fraction([]) == 1.0  # nothing timed: no discount


def test_user_accelerator_from_toml(tmp_path):
    path = tmp_path / "mi300x.toml"
    path.write_text('name = "MI300X"\npeak_tflops = 1307\nmemory_gb = 192\nmemory_bandwidth_gbps = 5300\n'
                    "link_bandwidth_gbps = 448\n")
    acc = load_accelerator(path)
    assert (acc.name, acc.peak_flops, acc.memory_bytes) == ("MI300X", 1307e12, 192e9)
    for bad in ("-1", "true", "inf"):
        path.write_text(f'name = "x"\npeak_tflops = {bad}\nmemory_gb = 1\nmemory_bandwidth_gbps = 1\n'
                        "link_bandwidth_gbps = 1\n")
        with pytest.raises(ConfigError, match="peak_tflops .* must be a positive number"):
            load_accelerator(path)
    with pytest.raises(ConfigError, match="unknown accelerator"):
        get_accelerator("TPUv9")


def test_user_accelerator_declares_blackwell_features_and_keeps_them_when_written(tmp_path):
    """A Blackwell-class part outside the catalogue (a B300, say) can take MXFP8 and NVFP4 plans and span a rack's
    NVLink: its file says so."""
    from flopwise.hardware import write_accelerator

    path = tmp_path / "b300.toml"
    base = 'name = "B300"\npeak_tflops = 2250\nmemory_gb = 270\nmemory_bandwidth_gbps = 8000\nlink_bandwidth_gbps = 900\n'
    path.write_text(base + "fp8_peak_tflops = 4500\nfp4_peak_tflops = 13500\nblock_scaled_fp8 = true\n"
                    "nvlink_domain_gpus = 72\n")
    acc = load_accelerator(path)
    assert acc.block_scaled_fp8 and acc.fp8_peak_flops == 4500e12 and acc.fp4_peak_flops == 13500e12
    assert acc.nvlink_domain_gpus == 72 == CATALOGUE["GB200"].nvlink_domain_gpus
    assert CATALOGUE["B200"].nvlink_domain_gpus == 0
    assert load_accelerator(write_accelerator(acc, tmp_path / "again.toml")) == acc
    assert [a.name for a in CATALOGUE.values() if a.block_scaled_fp8] == ["B200", "GB200", "B300", "GB300", "MI350X",
                                                                          "MI355X"]
    # FP4: twice the FP8 rate on the Blackwell and CDNA 4 parts, none before them; NVFP4 on Blackwell's only
    assert {a.name: a.fp4_peak_flops / a.fp8_peak_flops for a in CATALOGUE.values() if a.fp4_peak_flops} == {
        "B200": 2.0, "GB200": 2.0, "B300": 13125 / 4500, "GB300": 3.0, "MI350X": 2.0, "MI355X": 2.0}
    assert [a.name for a in CATALOGUE.values() if a.fp4_peak_flops and a.nvfp4] == ["B200", "GB200", "B300", "GB300"]
    assert not load_accelerator(write_accelerator(CATALOGUE["H100-SXM"], tmp_path / "h.toml")).block_scaled_fp8
    # a measured attention rate (a CPU's, or one a user timed) is kept; 0 (the class default) stays 0; so is a host
    # time per op
    # a measured device's efficiencies are relative to start-up timings, which its runs may beat
    path.write_text(base + "measured = true\ngemm_efficiency = 1.2\nmemory_efficiency = 2.5\n")
    assert load_accelerator(path).gemm_efficiency == 1.2 and load_accelerator(path).memory_efficiency == 2.5
    path.write_text(base + "attention_efficiency = 0.4\nop_overhead_us = 7.5\n")
    timed = load_accelerator(path)
    assert timed.attention_efficiency == 0.4 and timed.op_overhead_s == pytest.approx(7.5e-6)
    again = load_accelerator(write_accelerator(timed, tmp_path / "t.toml"))
    assert again.op_overhead_s == pytest.approx(timed.op_overhead_s)
    assert dataclasses.replace(again, op_overhead_s=timed.op_overhead_s) == timed
    assert load_accelerator(write_accelerator(CATALOGUE["H100-SXM"], tmp_path / "h.toml")).attention_efficiency == 0
    for extra, message in (('block_scaled_fp8 = "yes"\nfp8_peak_tflops = 4500\n', "must be true or false"),
                           ("block_scaled_fp8 = true\n", "needs fp8_peak_tflops"),
                           ("nvlink_domain_gpus = 7.5\n", r"= 7.5 must be a whole number \(0: the node\)"),
                           ("fp4_peak_tflops = 9000\n", "fp4_peak_tflops needs fp8_peak_tflops"),
                           # TOML's true is an int to Python, and nan a float: neither is a rate
                           ("fp8_peak_tflops = true\n", "fp8_peak_tflops = True must be a non-negative number"),
                           ("fp8_peak_tflops = nan\n", "must be a non-negative number"),
                           ("gemm_efficiency = true\n", "must be a fraction"),
                           ("attention_efficiency = 0\n", "attention_efficiency = 0 must be a fraction"),
                           ("attention_efficiency = 1.5\n", "must be a fraction.*measured = true.* may exceed 1"),
                           ("measured = true\ngemm_efficiency = 4.5\n", "must be at most 4"),
                           ('measured = "yes"\n', "measured = 'yes' must be true or false"),
                           ("op_overhead_us = -1\n", "op_overhead_us = -1 must be a non-negative number")):
        path.write_text(base + extra)
        with pytest.raises(ConfigError, match=message):
            load_accelerator(path)


def test_export_variants_and_whole_token_device_names():
    # the export variants: A100 / H100 silicon with NVLink cut to 400 GB/s total
    a800, h800 = get_accelerator("A800"), get_accelerator("h800-sxm")
    assert a800.peak_flops == CATALOGUE["A100-80GB"].peak_flops and a800.link_bandwidth == 200e9
    assert h800.fp8_peak_flops == CATALOGUE["H100-SXM"].fp8_peak_flops and h800.link_bandwidth == 200e9
    assert match_device_name("A800-SXM4-80GB") is a800 and match_device_name("NVIDIA H800") is h800
    # a model name inside another, or a form the catalogue lacks, matches nothing
    for name in ("H100 NVL", "A100X", "RTX A1000", "A10G", "Quadro P1000", "H800 PCIe", "A800-SXM4-40GB", "GB3000",
                 "B3000"):
        assert match_device_name(name) is None, name
    with pytest.raises(ConfigError, match="unknown accelerator 'A100-SXM4-40GB'"):
        get_accelerator("A100-SXM4-40GB")  # user input stays exact: only a CSV row's gpu cell is read loosely


def test_newer_parts_are_read_from_their_device_names_and_are_not_calibrated():
    """B200 and the two GH200 memory variants come from datasheets (module docstring); CUDA's names for them map to
    their entries, and no published run calibrates them, so plans on them say so (tests/plan/test_calibration_set.py)."""
    from flopwise.hardware import CALIBRATED

    b200, gh200, gh200_144 = (CATALOGUE[n] for n in ("B200", "GH200", "GH200-144GB"))
    assert match_device_name("NVIDIA B200") is b200
    assert match_device_name("NVIDIA GH200 480GB") is gh200  # 480 GB is the superchip's CPU memory
    assert match_device_name("NVIDIA GH200 144G HBM3e") is gh200_144
    assert b200.peak_flops == 2250e12 and b200.fp8_peak_flops == 2 * b200.peak_flops
    # the same Hopper die as the H200 at another memory: compute alike, memory and bandwidth their own
    assert gh200.peak_flops == gh200_144.peak_flops == CATALOGUE["H200"].peak_flops
    assert gh200.memory_bandwidth < gh200_144.memory_bandwidth and gh200.memory_bytes < gh200_144.memory_bytes
    assert not {"B200", "GB200", "GH200", "GH200-144GB"} & CALIBRATED
    # GB200: the B200's silicon at the NVL72 module's clocks, FP8 at twice bf16, NVLink 5 like the B200
    gb200 = CATALOGUE["GB200"]
    assert match_device_name("NVIDIA GB200") is gb200 and match_device_name("GB200 NVL72") is gb200
    assert match_device_name("NVIDIA GB300") is CATALOGUE["GB300"] and match_device_name("NVIDIA B300 SXM6 AC") is \
        CATALOGUE["B300"]
    assert gb200.peak_flops > b200.peak_flops and gb200.fp8_peak_flops == 2 * gb200.peak_flops
    assert gb200.link_bandwidth == b200.link_bandwidth and gb200.memory_bandwidth == b200.memory_bandwidth
    # its sustained FP8 GEMM rate against the calibrated H100's stays within the range Azure's cuBLASLt benchmark
    # measured on the two (2.04-2.23x at the shapes of 8192 and up; hardware.py's docstring), and against the H200's
    # (2.09-2.21x)
    def fp8_rate(acc):
        return acc.fp8_peak_flops * acc.gemm_efficiency

    assert 2.04 <= fp8_rate(gb200) / fp8_rate(CATALOGUE["H100-SXM"]) <= 2.23
    assert 2.09 <= fp8_rate(gb200) / fp8_rate(CATALOGUE["H200"]) <= 2.21


def test_an_accelerator_file_says_its_fp4_takes_only_mx_scales(tmp_path):
    """AMD's CDNA 4: FP4 tensor cores for the OCP MX formats, not NVIDIA's NVFP4 (Accelerator.nvfp4)."""
    from flopwise.hardware import CATALOGUE, load_accelerator, write_accelerator

    mi355x = CATALOGUE["MI355X"]
    path = write_accelerator(mi355x, tmp_path / "mi355x.toml")
    assert "nvfp4 = false" in path.read_text() and load_accelerator(path) == mi355x
    assert "nvfp4" not in write_accelerator(CATALOGUE["B200"], tmp_path / "b200.toml").read_text()
    assert load_accelerator(tmp_path / "b200.toml").nvfp4
