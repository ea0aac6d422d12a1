"""benchmarks/planner_kernels.py on CPU (--quick): every section times its kernels beside the planner's figure."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    assert (preset["model"], preset["micro_batch"], preset["layers"]) == ("nano", 2, 2)
