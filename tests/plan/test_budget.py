import math

import pytest

from flopwise.errors import ConfigError
from flopwise.flops import model_flops_per_token, param_counts
from flopwise.hardware import get_accelerator
from flopwise.models.config import get_preset
from flopwise.plan.budget import PF_DAY, budget, optimal_params

A100 = get_accelerator("A100-80GB")


def test_six_n_d_and_pf_days():
    b = budget(A100, gpus=1024, mfu=0.5, params=7e9, tokens=1e12)
    assert b.flops == pytest.approx(6 * 7e9 * 1e12)  # 4.2e22
    assert b.pf_days == pytest.approx(4.2e22 / 8.64e19)  # ~486 PF-days
    assert b.optimal_tokens == pytest.approx(1.4e11)  # 20 tokens per parameter
    seconds = 4.2e22 / (1024 * 312e12 * 0.5)
    assert b.seconds == pytest.approx(seconds) and b.days == pytest.approx(seconds / 86400)
    assert b.gpu_hours == pytest.approx(seconds * 1024 / 3600)


def test_compute_optimal_size_for_a_flop_budget():
    # C = 6 N (20 N) = 120 N^2: 1.2e24 FLOPs -> N = 1e11, D = 2e12
    b = budget(A100, gpus=8, mfu=0.4, flops=1.2e24)
    assert b.params == pytest.approx(1e11) and b.tokens == pytest.approx(2e12)
    assert optimal_params(1.2e24) == pytest.approx(1e11)
    assert b.pf_days == pytest.approx(1.2e24 / PF_DAY)


def test_preset_uses_the_model_flops_and_chinchilla_tokens():
    cfg = get_preset("yuan2-102b")
    b = budget(A100, gpus=1024, mfu=0.45, model=cfg)
    n = param_counts(cfg).total
    assert b.params == n and b.tokens == pytest.approx(20 * n)
    assert b.flops == pytest.approx(model_flops_per_token(cfg) * 20 * n)
    assert 6 * n * 20 * n < b.flops < 1.1 * 6 * n * 20 * n  # attention adds a few percent to 6ND
    assert math.isclose(b.days, b.flops / (1024 * 312e12 * 0.45) / 86400)


def test_bad_budget_inputs():
    with pytest.raises(ConfigError, match="mfu"):
        budget(A100, gpus=8, mfu=1.5, params=1e9)
    with pytest.raises(ConfigError, match="--preset"):
        budget(A100, gpus=8, mfu=0.5)
