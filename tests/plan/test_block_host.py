"""The host's time per block (Software.block_host_s, `--block-host-ms`) and its probe (`flopwise plan host-probe`):
a block whose GPU work is shorter than the host's time to issue it waits for the host; a longer one does not."""

import json
import math
import subprocess
import sys

import pytest

from flopwise.errors import ConfigError
from flopwise.hardware import Accelerator, get_accelerator
from flopwise.layout import Layout
from flopwise.models.config import ModelConfig
from flopwise.plan import host_probe
from flopwise.plan.cost import Constants, CostModel, block_wrappers
from flopwise.plan.search import search
from flopwise.plan.spec import EAGER_BLOCK_HOST_S, SOFTWARE, Cluster, Training, wrapper_key
from tests.cli_run import run_cli

H100 = get_accelerator("H100-SXM")
# blocks of a few microseconds on an H100: any host figure of a millisecond holds them up
SMALL = ModelConfig(vocab_size=512, layers=4, hidden=256, heads=4, kv_heads=4, ffn=1024, seq_len=256, lfa=False,
                    mlp="swiglu")
NO_STRAGGLERS = Constants(straggler_cv=0.0)


def model_cost(host_s=None, gpus=1, model=SMALL, gb=8, software="torch-compile"):
    """A profile without a host figure of its own (torch-eager has one: EAGER_BLOCK_HOST_S)."""
    return CostModel(model, Cluster(H100, gpus), Training(gb, software=software, block_host_s=host_s), NO_STRAGGLERS)


def layer_gpu(cm: CostModel, layout: Layout) -> float:
    lc = cm.layer_cost(layout.tp, layout.sp, layout.micro_batch, layout.recompute, layout.recompute_every, layout.cp)
    return lc.fwd + lc.bwd + lc.recompute + lc.tp + lc.cp


def test_a_block_shorter_than_the_hosts_time_waits_for_it_each_micro_batch():
    layout = Layout(micro_batch=2)  # 4 micro-batches of the global 8
    host = 2e-3
    bare, held = model_cost().evaluate(layout), model_cost(host).evaluate(layout)
    gpu = layer_gpu(model_cost(), layout)
    assert gpu < host / 10
    wait = held.microbatches * SMALL.layers * (host - gpu)
    assert held.breakdown["host"] == pytest.approx(wait)
    assert held.step_time - bare.step_time == pytest.approx(wait)
    # everything else the same: the wait is the host's alone
    for key in ("compute", "recompute", "tp", "dp", "optimizer"):
        assert held.breakdown[key] == bare.breakdown[key]


def test_a_block_longer_than_the_hosts_time_is_not_held_up():
    big = SMALL.replace(hidden=4096, heads=32, kv_heads=8, ffn=14336, seq_len=8192)
    layout = Layout(micro_batch=1)
    gpu = layer_gpu(model_cost(model=big), layout)
    held = model_cost(gpu / 2, model=big).evaluate(layout)
    assert held.breakdown["host"] == 0
    assert held.step_time == model_cost(model=big).evaluate(layout).step_time


def test_a_pipeline_waits_in_every_stage_and_in_its_fill_and_drain():
    layout = Layout(pp=2, micro_batch=1)  # 8 micro-batches, two stages of 2 layers
    host = 2e-3
    bare, held = model_cost(gpus=2).evaluate(layout), model_cost(host, gpus=2).evaluate(layout)
    per_stage = 2 * (host - layer_gpu(model_cost(gpus=2), layout))
    m, p = held.microbatches, 2
    assert held.step_time - bare.step_time == pytest.approx((m - 1 + p) * per_stage)
    assert held.breakdown["host"] == pytest.approx(m * per_stage)


@pytest.mark.parametrize("value", [-1e-3, math.nan, math.inf])
def test_a_host_time_must_be_a_non_negative_number(value):
    with pytest.raises(ConfigError, match="block_host_s"):
        Training(8, block_host_s=value)


def test_a_measured_cpu_refuses_it_its_host_is_already_costed():
    cpu = Accelerator("CPU", 1e11, 16e9, 20e9, 2e9, measured=True, gemm_efficiency=0.8, memory_efficiency=1.0)
    with pytest.raises(ConfigError, match="op_overhead_s"):
        CostModel(SMALL, Cluster(cpu, 1), Training(8, precision="fp32", block_host_s=1e-3))


def test_a_plan_that_costs_the_host_drops_the_small_block_note():
    cluster = Cluster(H100, 8)
    fixed = {"tp": 1, "pp": 1, "dp": 8, "micro_batch": 1}

    def notes(host_s):
        result = search(SMALL, cluster, Training(8, software="torch-compile", block_host_s=host_s), fixed, top=1)
        return result.plans[0].notes

    assert any(n.startswith("small blocks:") for n in notes(None))
    assert not any(n.startswith("small blocks:") for n in notes(2e-3))
    assert not any(n.startswith("small blocks:") for n in notes(0.0))  # measured as none (CUDA graphs): no note
    # a PyTorch-native eager plan is costed with its stack's figure: no note that says the host is not costed
    eager = search(SMALL, cluster, Training(8, software="torch-eager"), fixed, top=1).plans[0]
    assert eager.block_host_s == EAGER_BLOCK_HOST_S["eager"] and eager.to_dict()["block_host_s"] == eager.block_host_s
    assert not any(n.startswith("small blocks:") for n in eager.notes)


def test_recomputing_one_block_in_k_costs_the_host_a_kth_of_the_recomputation():
    eager = model_cost(software="torch-eager", gpus=4)
    plain, full = EAGER_BLOCK_HOST_S["tp"], EAGER_BLOCK_HOST_S["tp+ac"]
    assert eager.block_host_time(Layout(tp=4, recompute="full")) == pytest.approx(full)
    assert eager.block_host_time(Layout(tp=4, recompute="full", recompute_every=4)) == pytest.approx(
        plain + (full - plain) / 4)


def test_the_balanced_split_weighs_the_hosts_time_per_block():
    """A block the host holds up takes the host's time, so the split balances blocks against the head accordingly:
    with a large vocabulary the last stage gets fewer layers when blocks are cheap, more when the host sets them."""
    from flopwise.plan.search import balanced_split

    model = SMALL.replace(layers=16, vocab_size=128256)
    layout = Layout(pp=4, micro_batch=1)

    def split(host_s):
        cm = CostModel(model, Cluster(H100, 4), Training(32, software="torch-compile", block_host_s=host_s))
        return balanced_split(cm, layout, cm.microbatches(layout))

    bare, held = split(0.0), split(20e-3)
    assert sum(bare) == sum(held) == 16
    assert held == (4, 4, 4, 4) and bare[-1] < 4  # the head dwarfs cheap blocks; 20 ms blocks dwarf the head


@pytest.mark.parametrize("layout, key", [
    (Layout(), "eager"), (Layout(tp=8), "tp"), (Layout(recompute="full"), "ac"), (Layout(dp=8, zero=3), "fsdp"),
    (Layout(dp=8, zero=2), "fsdp"), (Layout(dp=8, zero=1), "eager"), (Layout(tp=4, dp=2, zero=3, recompute="full"),
                                                                      "tp+ac+fsdp"),
    (Layout(tp=2, recompute="selective"), "tp"), (Layout(tp=4, recompute="full"), "tp+ac"),
])
def test_the_wrappers_a_layout_puts_on_a_pytorch_block(layout, key):
    assert block_wrappers(layout) == key and key in EAGER_BLOCK_HOST_S


def test_the_probe_and_the_planner_name_a_stack_of_wrappers_alike():
    """Each figure's key is the name the probe reads back and the planner builds (one wrapper_key for both)."""
    for key in EAGER_BLOCK_HOST_S:
        assert wrapper_key(host_probe.parse_wrapper(key)) == key
    assert wrapper_key(host_probe.parse_wrapper("fsdp+TP+ac")) == "tp+ac+fsdp"


def test_pytorch_eager_blocks_take_the_probes_figure_for_their_wrappers_unless_the_user_gives_one():
    assert [n for n, sw in SOFTWARE.items() if sw.eager_block_host] == ["torch-eager"]
    for layout in (Layout(dp=1), Layout(tp=4), Layout(recompute="full", micro_batch=2)):
        eager = model_cost(software="torch-eager", gpus=layout.gpus)
        assert eager.block_host_time(layout) == EAGER_BLOCK_HOST_S[block_wrappers(layout)]
        assert model_cost(gpus=layout.gpus).block_host_time(layout) == 0  # torch-compile: not costed
        given = model_cost(3e-3, software="torch-eager", gpus=layout.gpus)
        assert given.block_host_time(layout) == 3e-3
        assert model_cost(0.0, software="torch-eager", gpus=layout.gpus).block_host_time(layout) == 0
        plan, bare = eager.evaluate(layout), model_cost(0.0, software="torch-eager", gpus=layout.gpus).evaluate(layout)
        wait = EAGER_BLOCK_HOST_S[block_wrappers(layout)] - layer_gpu(eager, layout)
        assert wait > 0 and plan.breakdown["host"] == pytest.approx(plan.microbatches * SMALL.layers * wait)
        assert plan.step_time - bare.step_time == pytest.approx(plan.breakdown["host"])
    # FSDP wraps the blocks over a single data-parallel rank too, though it shards nothing (costed as zero = 0)
    assert model_cost(software="torch-eager", gpus=4).block_host_time(Layout(tp=4, zero=3)) == EAGER_BLOCK_HOST_S[
        "tp+fsdp"]
    cpu = Accelerator("CPU", 1e11, 16e9, 20e9, 2e9, measured=True, gemm_efficiency=0.8, memory_efficiency=1.0)
    on_cpu = CostModel(SMALL, Cluster(cpu, 1), Training(8, precision="fp32", software="torch-eager"))
    assert on_cpu.block_host_time(Layout()) == 0  # a CPU's host time is its op_overhead_s


def test_the_cli_costs_the_host_time_and_records_it(capsys):
    args = ("plan", "--layers", 4, "--hidden", 256, "--heads", 4, "--ffn", 1024, "--vocab", 512, "--seq", 256,
            "--no-lfa", "--gpu", "H100", "--gpus", 1, "--global-batch", 8, "--software", "torch-compile",
            "--layout", "micro_batch=2", "--json")
    code, out, _ = run_cli(capsys, *args, "--block-host-ms", 2)
    assert code == 0
    report = json.loads(out)
    assert report["training"]["block_host_s"] == pytest.approx(2e-3)
    best = report["plans"][0]
    assert best["breakdown_s"]["host"] > 4 * 4 * 1.9e-3  # 4 micro-batches x 4 blocks, each held to ~2 ms
    code, out, _ = run_cli(capsys, *args)
    report = json.loads(out)
    assert code == 0 and report["plans"][0]["breakdown_s"]["host"] == 0 and report["training"]["block_host_s"] is None
    code, _, err = run_cli(capsys, *args, "--block-host-ms", -1)
    assert code != 0 and "block-host-ms" in err


@pytest.mark.parametrize("text, parts", [("eager", set()), ("tp", {"tp"}), ("TP+ac+fsdp+autocast",
                                                                          {"tp", "ac", "fsdp", "autocast"}),
                                         ("sac+tp", {"tp", "sac"})])
def test_wrapper_stacks_are_read(text, parts):
    assert host_probe.parse_wrapper(text) == parts


@pytest.mark.parametrize("text", ["tp+tp", "eager+tp", "tp+zero3", "", "ac+sac"])
def test_unknown_or_repeated_wrappers_are_refused(text):
    with pytest.raises(ConfigError, match="wrapper"):
        host_probe.parse_wrapper(text)


@pytest.mark.parametrize("kwargs, match", [({"world": 1}, "world"), ({"repeats": 0}, "repeats"),
                                           ({"device": "tpu"}, "cpu or cuda"), ({"wrappers": ()}, "at least one")])
def test_the_probe_refuses_bad_arguments_before_timing(kwargs, match):
    args = {"wrappers": ("eager",), "world": 2, "repeats": 1, "device": "cpu", **kwargs}
    with pytest.raises(ConfigError, match=match):
        host_probe.check(**args)


def test_the_probe_times_each_stack_and_leaves_no_process_group(capsys):
    code, out, _ = run_cli(capsys, "plan", "host-probe", "--wrappers", "eager,tp+ac+fsdp+autocast", "--world", 2,
                           "--repeats", 2, "--json")
    assert code == 0
    report = json.loads(out)
    assert [b["wrapper"] for b in report["blocks"]] == ["eager", "tp+ac+fsdp+autocast"]
    for b in report["blocks"]:  # (no order asserted between the two: medians of two timings on a shared machine)
        assert b["forward_ms"] > 0 and b["step_ms"] > 0
    import torch.distributed as dist
    assert not dist.is_initialized()
    assert host_probe.plain_block_ops() > 50  # a block's norms, projections, attention and their backward


def test_the_probe_refuses_to_replace_a_process_group():
    """In a process of its own: a gloo group of one rank is up, the probe would tear it down."""
    code = ("import os, torch.distributed as dist\n"
            "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT='0')\n"
            "from torch.distributed import TCPStore\n"
            "store = TCPStore('127.0.0.1', 0, 1, True)\n"
            "dist.init_process_group('gloo', store=store, rank=0, world_size=1)\n"
            "from flopwise.errors import ConfigError\n"
            "from flopwise.plan.host_probe import measure\n"
            "try:\n    measure(('eager',), world=2, repeats=1)\nexcept ConfigError as e:\n    print('refused:', e)\n"
            "assert dist.is_initialized()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused: a process group is already initialised" in out.stdout
