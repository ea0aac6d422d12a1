"""benchmarks/planner_kernels.py on CPU (--quick): every section times its kernels beside the planner's figure."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmark_module import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _module():
    return load_benchmark("planner_kernels")


def test_kernels_are_grouped_as_the_cost_model_groups_them():
    """Names as torch.profiler reported them for flopwise's step on an H200 (torch 2.11, cuDNN 9.19)."""
    kind = _module().kernel_kind
    assert kind("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT") == "gemm"
    assert kind("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64") == "gemm"
    assert kind("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x128") == "attention"
    assert kind("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4>>") == "attention"
    for name in ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>",
                 "triton_per_fused__fused_rms_norm__fused_rms_norm_backward__to_copy_5", "Memset (Device)",
                 "void at::native::(anonymous namespace)::cunn_SoftMaxBackward<4, float, float, float>"):
        assert kind(name) == "elementwise", name


def test_llama_width_keeps_the_shape_rules():
    cfg = _module().llama_width(3072)
    assert (cfg.hidden, cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.ffn) == (3072, 24, 24, 128, 8192)


def test_quick_run_measures_every_section_beside_the_planner(tmp_path):
    out = tmp_path / "kernels.json"
    sections = "gemm,sustained,sustained_block,block,attention,layer,step"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "planner_kernels.py"), "--quick", "--sections",
                           sections, "--sustain-seconds", "0.5", "--presets", "nano", "--micro-batch", "2",
                           "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    for key in sections.split(","):
        assert "error" not in data[key], data[key]
    assert data["gemm"]["gemm_tflops"] > 0 and data["sustained"]["window_tflops"]
    for row in data["block"]:  # each GEMM measured in all three passes, with the planner's forward and backward
        assert min(row["fwd_s"], row["dgrad_s"], row["wgrad_s"], row["pred_fwd_s"], row["pred_bwd_s"]) > 0
    assert {r["tp"] for r in data["block"]} == {1, 2}
    held = data["sustained_block"]  # the block's GEMMs held window by window, beside the planner's block time
    assert [(r["tp"], r["precision"]) for r in held] == [(8, "bf16"), (1, "bf16")]  # no FP8 on a CPU
    for row in held:
        assert row["window_block_s"] and min(row["window_block_s"]) > 0 and row["pred_block_s"] > 0
        assert row["planner_over_settled"] == row["pred_block_s"] / row["settled_s"]
    for row in data["attention"]:
        assert "error" not in row and row["fwd_s"] > 0 and row["pred_fwd_s[te]"] > 0
    (layer,) = data["layer"]
    assert layer["fwd_s"] > 0 and layer["bwd_s"] > 0 and layer["pred_bwd_s[flopwise]"] > 0
    step, preset = data["step"]  # the quick shape, then the whole `nano` preset at micro-batch 2
    for row in (step, preset):
        assert row["step_s"] > 0 and row["optimizer_s"] > 0 and row["pred_step_s"] > 0
        assert row["pred_breakdown_s"]["optimizer"] > 0 and row["pred_layer_fwd_bwd_s"] > 0
        assert row["fwd_bwd_gpu_busy_s"] is None  # kernel time is read on a GPU only
        # the planner's split of a layer by kernel kind adds up to its layer time
        assert sum(row["pred_layer_s"].values()) == pytest.approx(row["pred_layer_fwd_bwd_s"], rel=1e-9)
    assert (preset["model"], preset["micro_batch"], preset["layers"]) == ("nano", 2, 2)
