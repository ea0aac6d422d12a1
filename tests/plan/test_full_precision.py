"""fp32 and tf32 (issue 14, item 36): fp32 GEMMs run on the CUDA cores unless the run turns TF32 on, each at its own
datasheet rate; both keep 4-byte state; a part without TF32 refuses tf32; a file that gives no FP32 rate refuses fp32."""

import pytest

from flopwise.errors import ConfigError, PlanError
from flopwise.hardware import CATALOGUE, Accelerator, accelerator_toml, get_accelerator, load_accelerator, write_accelerator
from flopwise.layout import Layout
from flopwise.models.config import ModelConfig
from flopwise.plan import memory as mem
from flopwise.plan.cost import CostModel
from flopwise.plan.search import plan_notes
from flopwise.plan.spec import Cluster, Training
from flopwise.plan.validate import row_inputs
from tests.cli_run import run_cli

# big enough that every GEMM is compute-bound at the fp32 and the TF32 rate alike
MODEL = ModelConfig(vocab_size=32000, layers=4, hidden=4096, heads=32, kv_heads=8, ffn=14336, seq_len=4096,
                    lfa=False, mlp="swiglu")
WITH_TF32 = [a for a in CATALOGUE.values() if a.tf32_peak_flops > 0]


def cost(acc, precision, software="torch-eager"):
    return CostModel(MODEL, Cluster(acc, 1), Training(1, precision=precision, software=software))


def test_every_catalogue_gpu_has_an_fp32_rate_and_tf32_only_from_ampere_on():
    assert all(a.fp32_peak_flops > 0 for a in CATALOGUE.values())
    without = {a.name for a in CATALOGUE.values() if a.tf32_peak_flops == 0}
    assert without == {"V100-32GB", "V100-16GB", "P100", "T4", "MI350X", "MI355X"}  # CDNA 4 dropped TF32 (XF32)
    for a in WITH_TF32:  # the CUDA cores are slower than the TF32 tensor cores, which are slower than bf16's
        assert a.fp32_peak_flops < a.tf32_peak_flops < a.peak_flops, a.name


@pytest.mark.parametrize("acc", WITH_TF32, ids=lambda a: a.name)
def test_fp32_gemms_and_attention_run_at_the_fp32_rate_tf32_at_the_tf32_rate(acc):
    fp32, tf32 = cost(acc, "fp32"), cost(acc, "tf32")
    assert fp32.gemm_rate == pytest.approx(acc.fp32_peak_flops * acc.gemm_efficiency)
    assert tf32.gemm_rate == pytest.approx(acc.tf32_peak_flops * acc.gemm_efficiency)
    ratio = acc.tf32_peak_flops / acc.fp32_peak_flops
    slow, fast = fp32.layer_compute(1, False, 1), tf32.layer_compute(1, False, 1)
    for kind in ("gemm", "attention"):
        assert slow[kind][0] / fast[kind][0] == pytest.approx(ratio, rel=1e-6), kind
    assert slow["elementwise"] == fast["elementwise"]  # the same 4-byte activations either way
    step = Layout(micro_batch=1)
    assert cost(acc, "fp32").evaluate(step).step_time > cost(acc, "tf32").evaluate(step).step_time


def test_tf32_keeps_fp32_state_and_traffic():
    assert Training(8, precision="tf32").dtype_bytes == Training(8, precision="fp32").dtype_bytes == 4
    assert mem.state_bytes_per_param("tf32") == mem.state_bytes_per_param("fp32") == (4, 4, 8)
    h100 = get_accelerator("H100-SXM")
    layout = Layout(micro_batch=1)
    tf32, fp32, bf16 = (cost(h100, p).evaluate(layout).peak_memory for p in ("tf32", "fp32", "bf16"))
    assert tf32 == pytest.approx(fp32) and tf32 > bf16


@pytest.mark.parametrize("name", ["V100-32GB", "P100", "T4"])
def test_tf32_is_refused_where_there_are_no_tf32_tensor_cores(name):
    acc = get_accelerator(name)
    with pytest.raises(PlanError, match="no TF32 tensor cores.*use precision fp16 or fp32"):
        cost(acc, "tf32")
    assert cost(acc, "fp32").gemm_rate == pytest.approx(acc.fp32_peak_flops * acc.gemm_efficiency)


def test_a_measured_cpu_runs_fp32_at_its_own_peak_and_refuses_tf32():
    cpu = Accelerator("CPU", 1e11, 16e9, 20e9, 2e9, measured=True, gemm_efficiency=0.8, memory_efficiency=1.0)
    assert cost(cpu, "fp32", "flopwise").peak == cpu.peak_flops
    with pytest.raises(PlanError, match=r"CPU has no TF32 tensor cores.*use precision fp32$"):
        cost(cpu, "tf32", "flopwise")


def test_an_accelerator_file_names_its_fp32_and_tf32_rates_or_the_plan_says_what_is_missing(tmp_path):
    a100 = get_accelerator("A100-80GB")
    assert load_accelerator(write_accelerator(a100, tmp_path / "a100.toml")).tf32_peak_flops == a100.tf32_peak_flops
    data = {k: v for k, v in accelerator_toml(a100).items() if k not in ("fp32_peak_tflops", "tf32_peak_tflops")}
    lines = [f"{k} = {v!r}".replace("'", '"') for k, v in data.items()]
    (tmp_path / "bare.toml").write_text("\n".join(lines) + "\n")
    bare = load_accelerator(tmp_path / "bare.toml")
    with pytest.raises(PlanError, match="accelerator file gives no fp32_peak_tflops"):
        cost(bare, "fp32")
    with pytest.raises(PlanError, match=r"file gives no tf32_peak_tflops .*: add it, or use precision bf16$"):
        cost(bare, "tf32")  # fp32 is not offered where the file cannot plan it either
    assert cost(bare, "bf16").gemm_rate == pytest.approx(a100.peak_flops * a100.gemm_efficiency)
    (tmp_path / "bad.toml").write_text("\n".join(lines + ["fp32_peak_tflops = -1"]) + "\n")
    with pytest.raises(ConfigError, match="fp32_peak_tflops"):
        load_accelerator(tmp_path / "bad.toml")
    (tmp_path / "cpu.toml").write_text("\n".join(lines + ["measured = true", "tf32_peak_tflops = 100"]) + "\n")
    with pytest.raises(ConfigError, match="measured device's peak_tflops is its fp32 rate"):
        load_accelerator(tmp_path / "cpu.toml")


def test_a_gpu_fp32_plan_says_tf32_is_off_and_a_tf32_plan_does_not():
    h100 = get_accelerator("H100-SXM")
    notes = " ".join(plan_notes(MODEL, Cluster(h100, 1), Training(1, precision="fp32")))
    assert "CUDA cores at 67 TFLOP/s" in notes and "plan tf32" in notes
    assert "CUDA cores" not in " ".join(plan_notes(MODEL, Cluster(h100, 1), Training(1, precision="tf32")))


@pytest.mark.parametrize("cell, precision", [
    ("TF32", "tf32"), ("fp32 (TF32 on)", "tf32"), ("FP32", "fp32"), ("fp32", "fp32"), ("fp32 (TF32 off)", "fp32"),
    ("FP32 (TF32 disabled)", "fp32"), ("fp32, no tf32", "fp32"), ("bf16-mixed + tf32", "bf16"),
    ("amp_bf16, allow_tf32", "bf16"), ("fp8 with tf32", "fp8")])
def test_a_calibration_cell_naming_tf32_reads_as_tf32_unless_it_is_off_or_another_precision(cell, precision):
    row = {"model": "m", "layers": "2", "hidden": "256", "heads": "4", "kv_heads": "4", "ffn": "1024", "mlp": "gelu",
           "vocab": "1024", "seq": "128", "gpu": "A100-80GB", "gpus": "1", "global_batch": "8", "micro_batch": "8",
           "precision": cell, "software": "torch-eager"}
    assert row_inputs(row)[2].precision == precision


def test_the_cli_plans_tf32_and_refuses_it_on_a_v100_in_one_line(capsys):
    base = ["plan", "--preset", "nano", "--gpus", "1", "--global-batch", "8", "--top", "1"]
    code, out, _ = run_cli(capsys, *base, "--gpu", "A100-80GB", "--precision", "tf32")
    assert code == 0 and "CUDA cores" not in out
    code, _, err = run_cli(capsys, *base, "--gpu", "V100-32GB", "--precision", "tf32")
    assert code != 0 and "no TF32 tensor cores" in err and "Traceback" not in err


@pytest.mark.parametrize("software", ["te", "deepspeed-hf", "megatron", "torch-compile"])
def test_tf32_gradients_are_reduced_in_fp32_as_fp32_ones_are(software):
    h100 = get_accelerator("H100-SXM")
    layout = Layout(dp=64, micro_batch=1)

    def dp_time(precision):
        cm = CostModel(MODEL, Cluster(h100, 64), Training(64, precision=precision, software=software))
        return cm.evaluate(layout).breakdown["dp"]

    assert dp_time("tf32") == pytest.approx(dp_time("fp32")) and dp_time("tf32") > 0
