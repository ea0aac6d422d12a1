"""train.dtype = "tf32" (issue 14, item 37): fp32 weights with TF32 matmuls on a GPU, planned at the TF32 rate; refused
on a CPU before anything is built or written."""

import pytest
import torch

from flopwise.errors import ConfigError
from flopwise.hardware import get_accelerator
from flopwise.layout import Layout
from flopwise.models.config import get_preset
from flopwise.train import forecast
from flopwise.train.config import job_for_layout, load_config
from flopwise.train.engine import matmul_precision
from tests.cli_run import run_cli

CPU = torch.device("cpu")


def test_tf32_is_a_training_dtype_but_not_on_a_cpu_device():
    assert load_config(None, ["train.dtype=tf32"]).train.dtype == "tf32"
    with pytest.raises(ConfigError, match="train.dtype = 'tf32': TF32 matmuls run on NVIDIA GPUs.*use fp32"):
        load_config(None, ["train.dtype=tf32", "train.device=cpu"])
    with pytest.raises(ConfigError, match="must be one of auto, fp32, tf32, bf16"):
        load_config(None, ["train.dtype=fp16"])


@pytest.mark.parametrize(("dtype", "precision"), [("auto", "fp32"), ("fp32", "fp32"), ("bf16", "bf16")])
def test_a_cpu_run_is_planned_in_the_precision_its_matmuls_take(dtype, precision):
    assert matmul_precision(dtype, CPU) == precision


def test_tf32_resolved_to_a_cpu_is_refused_with_what_to_use():
    with pytest.raises(ConfigError, match="this run is on cpu: use fp32"):
        matmul_precision("tf32", CPU)


def test_a_tf32_job_is_forecast_at_the_tf32_rate_on_a_gpu():
    job = load_config(None, ["train.dtype=tf32"])
    a100 = get_accelerator("A100-80GB")
    tf32 = forecast.cost_model(job, a100, 1, 1, "tf32")
    fp32 = forecast.cost_model(job, a100, 1, 1, "fp32")
    assert tf32.gemm_rate / fp32.gemm_rate == pytest.approx(a100.tf32_peak_flops / a100.fp32_peak_flops)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="sets a CUDA matmul switch: needs a GPU")
def test_on_a_gpu_tf32_turns_tf32_matmuls_on_and_any_other_dtype_turns_them_off():
    gpu = torch.device("cuda")
    try:
        assert matmul_precision("tf32", gpu) == "tf32" and torch.get_float32_matmul_precision() == "high"
        assert matmul_precision("fp32", gpu) == "fp32" and torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision("highest")


def test_a_tf32_plan_writes_a_job_the_trainer_reads_back(capsys, tmp_path):
    job = job_for_layout(Layout(micro_batch=4), get_preset("nano"), global_batch=8, precision="tf32", preset="nano")
    assert job.train.dtype == "tf32"
    path = tmp_path / "job.toml"
    code, _, err = run_cli(capsys, "plan", "--preset", "nano", "--gpus", "1", "--gpu", "A100-80GB", "--global-batch",
                           "8", "--precision", "tf32", "--write-config", str(path))
    assert code == 0, err
    assert load_config(path).train.dtype == "tf32"


def test_training_in_tf32_on_a_cpu_stops_before_it_writes_anything(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine train.device = auto resolves to the GPU")
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--preset", "nano", "--steps", "1", "--out", str(out),
                           "--set", "train.dtype=\"tf32\"")
    assert code != 0 and "use fp32" in err and "Traceback" not in err
    assert not out.exists()
