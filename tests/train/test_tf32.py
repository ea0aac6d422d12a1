"""train.dtype = "tf32" (issue 14, item 37): fp32 weights with TF32 matmuls on a GPU, planned at the TF32 rate; refused
on a CPU before anything is built or written."""

import pytest
import torch

from flopwise.errors import ConfigError
from flopwise.hardware import get_accelerator
from flopwise.layout import Layout
from flopwise.models.config import get_preset
from flopwise.train import engine as engine_module
from flopwise.train import forecast
from flopwise.train.config import job_for_layout, load_config
from flopwise.train.engine import Engine, fp32_matmuls, matmul_precision, refuse_tf32
from tests.cli_run import run_cli

CPU = torch.device("cpu")


def test_tf32_is_a_training_dtype_but_not_on_a_cpu_device():
    assert load_config(None, ["train.dtype=tf32"]).train.dtype == "tf32"
    with pytest.raises(ConfigError, match="train.dtype = 'tf32': TF32 matmuls run on NVIDIA GPUs.*use fp32"):
        refuse_tf32("tf32", CPU)
    refuse_tf32("fp32", CPU)  # every other dtype runs anywhere
    with pytest.raises(ConfigError, match="must be one of auto, fp32, tf32, bf16"):
        load_config(None, ["train.dtype=fp16"])


@pytest.mark.parametrize(("dtype", "precision"), [("auto", "fp32"), ("fp32", "fp32"), ("bf16", "bf16")])
def test_a_cpu_run_is_planned_in_the_precision_its_matmuls_take_and_leaves_the_setting_alone(dtype, precision):
    assert matmul_precision(dtype, CPU) == (precision, None)


@pytest.mark.parametrize(("dtype", "precision", "setting"), [
    ("tf32", "tf32", "high"), ("fp32", "fp32", "highest"), ("bf16", "bf16", "highest"), ("auto", "bf16", "highest")])
def test_a_gpu_run_says_its_precision_and_the_matmul_setting_its_steps_run_under(dtype, precision, setting):
    assert matmul_precision(dtype, torch.device("cuda")) == (precision, setting)  # no GPU needed to name them


def test_the_matmul_setting_holds_inside_a_step_and_is_restored_after_it():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # the caller's own choice
        with fp32_matmuls("high"):
            assert torch.get_float32_matmul_precision() == "high"
            with fp32_matmuls("highest"):  # another engine's step in the same process
                assert torch.get_float32_matmul_precision() == "highest"
            assert torch.get_float32_matmul_precision() == "high"
        assert torch.get_float32_matmul_precision() == "medium"
        with fp32_matmuls(None):  # a CPU engine leaves it alone
            assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)


class _Planned(Exception):
    pass


@pytest.mark.parametrize(("gpu", "refused"), [("A100-80GB", None), ("V100-32GB", "V100-32GB has no TF32 tensor cores")])
def test_an_engine_on_a_gpu_plans_tf32_at_the_tf32_rate_or_refuses_a_part_without_it(monkeypatch, gpu, refused):
    seen = {}

    def planned(job, accelerator, world, local, precision):
        seen["precision"] = precision
        raise _Planned

    monkeypatch.setattr(engine_module, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(engine_module.forecast, "cost_model", planned)
    job = load_config(None, ["train.dtype=tf32"], preset="nano")
    if refused:
        with pytest.raises(ConfigError, match=refused):
            Engine(job, accelerator=get_accelerator(gpu))
        assert not seen
    else:
        with pytest.raises(_Planned):
            Engine(job, accelerator=get_accelerator(gpu))
        assert seen["precision"] == "tf32"


def test_tf32_resolved_to_a_cpu_is_refused_with_what_to_use():
    with pytest.raises(ConfigError, match="this run is on cpu: use fp32"):
        matmul_precision("tf32", CPU)


def test_a_tf32_job_is_forecast_at_the_tf32_rate_on_a_gpu():
    job = load_config(None, ["train.dtype=tf32"])
    a100 = get_accelerator("A100-80GB")
    tf32 = forecast.cost_model(job, a100, 1, 1, "tf32")
    fp32 = forecast.cost_model(job, a100, 1, 1, "fp32")
    assert tf32.gemm_rate / fp32.gemm_rate == pytest.approx(a100.tf32_peak_flops / a100.fp32_peak_flops)


def test_a_tf32_plan_writes_a_job_the_trainer_reads_back(capsys, tmp_path):
    job = job_for_layout(Layout(micro_batch=4), get_preset("nano"), global_batch=8, precision="tf32", preset="nano")
    assert job.train.dtype == "tf32"
    path = tmp_path / "job.toml"
    code, _, err = run_cli(capsys, "plan", "--preset", "nano", "--gpus", "1", "--gpu", "A100-80GB", "--global-batch",
                           "8", "--precision", "tf32", "--write-config", str(path))
    assert code == 0, err
    assert load_config(path).train.dtype == "tf32"


def test_training_in_tf32_on_a_cpu_stops_before_it_prepares_data_or_writes_anything(capsys, tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine train.device = auto resolves to the GPU")
    cache = tmp_path / "cache"
    monkeypatch.setenv("FLOPWISE_CACHE", str(cache))
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--preset", "nano", "--steps", "1", "--out", str(out),
                           "--set", "train.dtype=\"tf32\"")
    assert code != 0 and "use fp32" in err and "Traceback" not in err
    assert not out.exists() and not cache.exists()  # refused before the demo corpus was prepared
