"""recompute = 'op' in the planner (per-op selective checkpointing, torchtitan's default): what it keeps (measured
against torch in test_memory_vs_torch.py), what it recomputes, and where it is offered."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from flopwise.errors import ConfigError, LayoutError, PlanError
from flopwise.flops import block_gemms, op_checkpoint_gemms, recompute_flops_per_token
from flopwise.hardware import get_accelerator
from flopwise.layout import Layout
from flopwise.models import Transformer
from flopwise.models.config import ModelConfig
from flopwise.parallel.parallelize import apply_recompute
from flopwise.plan.cost import CostModel, block_wrappers
from flopwise.plan.search import search
from flopwise.plan.spec import EAGER_BLOCK_HOST_S, Cluster, Training
from tests.cli_run import run_cli

LLAMA = ModelConfig(vocab_size=32000, layers=4, hidden=4096, heads=32, kv_heads=8, ffn=14336, seq_len=4096,
                    lfa=False, mlp="swiglu")
H100 = get_accelerator("H100-SXM")


def cost(software="torch-compile", gpus=1):
    return CostModel(LLAMA, Cluster(H100, gpus), Training(8, software=software))


def test_a_swiglu_block_keeps_q_v_gate_and_down_and_recomputes_k_o_and_up():
    kept, again = op_checkpoint_gemms(LLAMA)
    assert [g.name for g in kept] == ["wq", "wv", "w_up", "w_down"]  # w_up twice in the order: gate, then up
    assert [g.name for g in again] == ["wk", "wo", "w_up"]
    gelu = ModelConfig(vocab_size=1024, layers=2, hidden=256, heads=4, kv_heads=4, ffn=1024, seq_len=128, lfa=True,
                       mlp="gelu")
    kept, again = op_checkpoint_gemms(gelu)  # the LFA filter runs first: per convolution one counted matmul, one addmm
    assert [g.name for g in kept] == ["lfa_conv1", "wq", "wv", "w_up"]
    # down is not kept and nothing needs its output: the recomputation stops before it
    assert [g.name for g in again] == ["lfa_conv2", "wk", "wo", "lfa_conv1", "lfa_conv2"]
    total = sum(g.k * g.n * g.count for g in block_gemms(LLAMA))
    assert 0 < sum(g.k * g.n for g in again) < total / 2


def test_op_recomputes_more_than_selective_and_less_than_full_and_keeps_less_than_selective():
    cm = cost()
    layers = {mode: cm.layer_cost(1, False, 1, mode) for mode in ("none", "selective", "op", "full")}
    assert layers["none"].recompute == 0
    assert layers["selective"].recompute < layers["op"].recompute < layers["full"].recompute
    flops = {mode: recompute_flops_per_token(LLAMA, mode) for mode in ("selective", "op", "full")}
    assert flops["selective"] < flops["op"] < flops["full"]
    memory = {mode: cm.evaluate(Layout(micro_batch=1, recompute=mode)).peak_memory
              for mode in ("none", "op", "full")}
    assert memory["full"] < memory["op"] < memory["none"]


def test_the_search_offers_op_only_when_asked():
    found = search(LLAMA, Cluster(H100, 8), Training(64, software="torch-compile"), {}, top=50, explain=False)
    assert all(p.layout.recompute != "op" for p in found.plans)
    asked = search(LLAMA, Cluster(H100, 8), Training(64, software="torch-compile"), {"recompute": "op"}, top=3,
                   explain=False)
    assert asked.plans and all(p.layout.recompute == "op" for p in asked.plans)


def test_op_is_refused_for_experts_with_what_to_use():
    moe = ModelConfig(vocab_size=512, layers=2, hidden=64, heads=4, kv_heads=2, ffn=96, seq_len=64, experts=4,
                      top_k=2)
    with pytest.raises(ConfigError, match="dense blocks"):
        op_checkpoint_gemms(moe)
    cm = CostModel(moe, Cluster(H100, 1), Training(8, software="torch-compile"))
    with pytest.raises((LayoutError, PlanError), match="dense blocks: use selective or full"):
        cm.evaluate(Layout(micro_batch=1, recompute="op"))


def test_the_cli_costs_a_layout_with_op(capsys):
    code, out, err = run_cli(capsys, "plan", "--preset", "nano", "--gpus", "1", "--gpu", "H100-SXM", "--global-batch",
                             "8", "--software", "torch-compile", "--layout", "recompute=op", "--top", "1")
    assert code == 0, err
    assert "rc=op" in out


class _Matmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)
        return func(*args, **(kwargs or {}))


def _backward_matmuls(cfg: ModelConfig, recompute: str) -> int:
    torch.manual_seed(0)
    model = Transformer(cfg)
    apply_recompute(model, recompute)
    tokens = torch.randint(0, cfg.vocab_size, (1, cfg.seq_len))
    loss = F.cross_entropy(model(tokens).view(-1, cfg.vocab_size), tokens.view(-1))
    with _Matmuls() as counter:
        loss.backward()
    return counter.calls


@pytest.mark.parametrize(("mlp", "lfa"), [("swiglu", False), ("swiglu", True), ("gelu", False), ("gelu", True)])
def test_the_matmuls_the_planner_recomputes_are_the_ones_the_trainer_runs_again(mlp, lfa):
    cfg = ModelConfig(vocab_size=256, layers=2, hidden=64, heads=4, kv_heads=2, ffn=128, seq_len=32, lfa=lfa, mlp=mlp)
    again = _backward_matmuls(cfg, "op") - _backward_matmuls(cfg, "none")
    assert again == cfg.layers * len(op_checkpoint_gemms(cfg)[1])


def test_op_runs_the_tp_collectives_again_as_full_recomputation_does():
    cm = cost(gpus=8)
    for sp in (False, True):
        none, op, full = (cm.layer_cost(8, sp, 1, mode).tp for mode in ("none", "op", "full"))
        assert op == pytest.approx(full) and op > none


def test_op_costs_the_host_its_own_measured_wrapper():
    layout = Layout(tp=8, zero=3, dp=1, micro_batch=1, recompute="op")
    assert block_wrappers(layout) == "tp+sac+fsdp"
    cm = CostModel(LLAMA, Cluster(H100, 8), Training(8, software="torch-eager"))
    assert cm.block_host_time(layout) == EAGER_BLOCK_HOST_S["tp+sac+fsdp"]
    assert EAGER_BLOCK_HOST_S["sac"] > EAGER_BLOCK_HOST_S["ac"]  # a dispatch mode on every op


@pytest.mark.parametrize("software", ["te", "megatron-lm", "megatron", "deepspeed", "deepspeed-hf"])
def test_op_is_refused_for_stacks_without_per_op_checkpointing(software):
    with pytest.raises(LayoutError, match=f"the {software} profile has no such mode: use selective or full"):
        cost(software=software).evaluate(Layout(micro_batch=1, recompute="op"))
