"""Parts without FlashAttention (V100, P100): each stack is costed with the attention it runs there
(hardware.Accelerator.flash_attention, spec.Software.flash_fallback, spec.attention_kernel)."""

import dataclasses

import pytest

from flopwise.errors import ConfigError, LayoutError
from flopwise.hardware import CATALOGUE, NO_FLASH_ATTENTION, load_accelerator, write_accelerator
from flopwise.layout import Layout
from flopwise.models.config import ModelConfig
from flopwise.plan.cost import CostModel
from flopwise.plan.search import plan_notes
from flopwise.plan.spec import ATTENTION_KERNELS, SOFTWARE, Cluster, Training, attention_kernel
from flopwise.plan.validate import row_inputs, validate_rows

V100, A100 = CATALOGUE["V100-32GB"], CATALOGUE["A100-80GB"]
MODEL = ModelConfig(vocab_size=32000, layers=4, hidden=2048, heads=16, ffn=8192, seq_len=2048, lfa=False, mlp="swiglu")
LAYOUT = Layout(dp=8, zero=1, micro_batch=2)


def plan(acc, **training):
    cm = CostModel(MODEL, Cluster(acc, 8), Training(64, precision="fp16", **training))
    return cm, cm.evaluate(LAYOUT)


def test_the_catalogue_marks_the_parts_flash_attention_2_does_not_run_on():
    assert NO_FLASH_ATTENTION == {"V100-32GB", "V100-16GB", "P100", "T4"}  # before Ampere
    assert all(a.flash_attention for a in (A100, CATALOGUE["H100-SXM"], CATALOGUE["B200"], CATALOGUE["A10"]))
    assert {sw.flash_fallback for sw in SOFTWARE.values()} <= set(ATTENTION_KERNELS)


@pytest.mark.parametrize("software", ["te", "megatron-lm"])
def test_megatron_family_stacks_run_their_unfused_softmax_where_flash_attention_does_not_run(software):
    """Megatron-LM without FlashAttention keeps the s x s scores: the plan on a V100 is the plan of the same run with
    unfused attention stated, slower and with more activations than with a fused kernel."""
    cm, fallback = plan(V100, software=software)
    assert cm.training.profile.attention == "unfused"
    _, stated = plan(V100, software=software, attention="unfused")
    _, fused = plan(V100, software=software, attention="flash")  # a memory-efficient fused kernel, stated
    assert fallback.step_time == stated.step_time and fallback.memory == stated.memory
    assert fallback.step_time > fused.step_time
    assert fallback.memory[0]["activations"] > 1.5 * fused.memory[0]["activations"]
    on_a100, _ = plan(A100, software=software)
    assert on_a100.training.profile.attention == "flash"


@pytest.mark.parametrize("software", ["torch-eager", "torch-compile", "flopwise", "deepspeed-hf"])
def test_sdpa_stacks_keep_a_fused_kernel_without_flash_attention(software):
    """PyTorch's SDPA picks its memory-efficient kernel on Volta: fused, no s^2 tensors."""
    cm, _ = plan(V100, software=software)
    assert cm.training.profile.attention == "flash"


def test_the_attention_a_run_states_wins_and_a_stack_already_unfused_stays_so():
    training = Training(64, software="te", attention="flash")
    assert training.attention == "flash" and attention_kernel(training, V100) == "flash"
    assert attention_kernel(Training(64, software="te"), V100) == "unfused"
    assert attention_kernel(Training(64, software="te"), A100) == "flash"
    for already in ("deepspeed", "megatron"):  # unfused everywhere: nothing to fall back from
        assert attention_kernel(Training(64, software=already), V100) == "unfused"
        cm, _ = plan(V100, software=already)
        assert cm.training.attention is None and not cm.attention_fallback
    with pytest.raises(ConfigError, match="flopwise's trainer runs SDPA"):
        Training(64, software="flopwise", attention="unfused")


def test_a_plan_says_which_attention_it_costed_without_flash_attention():
    def said(acc, **training):
        return [n for n in plan_notes(MODEL, Cluster(acc, 8), Training(64, **training)) if "FlashAttention" in n]

    (megatron,) = said(V100, software="te")
    assert megatron.startswith("V100-32GB cannot run FlashAttention-2") and "Megatron-LM's fused softmax" in megatron
    assert "--attention flash" in megatron
    (sdpa,) = said(V100, software="torch-compile")
    assert "memory-efficient kernel" in sdpa
    assert said(A100, software="te") == [] and said(V100, software="deepspeed") == []  # already unfused
    assert said(V100, software="te", attention="flash") == []  # stated: nothing to explain


def test_context_parallelism_refused_by_the_fallback_says_how_to_state_a_fused_kernel():
    cm, _ = plan(V100, software="te")
    with pytest.raises(LayoutError, match=r"needs a fused \(flash\) attention kernel \(V100-32GB cannot run "
                                          r"FlashAttention-2.*--attention flash if the run had a fused kernel\)"):
        cm.evaluate(Layout(dp=4, cp=2, zero=1, micro_batch=1))
    with pytest.raises(LayoutError, match=r"attention kernel$"):  # stated unfused: nothing to explain
        plan(V100, software="te", attention="unfused")[0].evaluate(Layout(dp=4, cp=2, zero=1, micro_batch=1))
    assert plan(V100, software="te", attention="flash")[0].evaluate(Layout(dp=4, cp=2, zero=1, micro_batch=1))


def test_an_accelerator_file_declares_a_part_without_flash_attention(tmp_path):
    path = write_accelerator(V100, tmp_path / "v100.toml")
    assert "flash_attention = false" in path.read_text()
    assert load_accelerator(path) == V100
    assert "flash_attention" not in write_accelerator(A100, tmp_path / "a100.toml").read_text()
    assert load_accelerator(tmp_path / "a100.toml").flash_attention
    bad = tmp_path / "bad.toml"
    bad.write_text(path.read_text().replace("flash_attention = false", 'flash_attention = "no"'))
    with pytest.raises(ConfigError, match="flash_attention = 'no' must be true or false"):
        load_accelerator(bad)
    custom = dataclasses.replace(A100, name="old-part", flash_attention=False)
    cm = CostModel(MODEL, Cluster(custom, 8), Training(64, software="megatron-lm"))
    assert cm.training.profile.attention == "unfused"


def row(**cells):
    base = {"model": "GPT", "layers": "24", "hidden": "2048", "heads": "16", "kv_heads": "16", "ffn": "8192",
            "mlp": "gelu", "vocab": "51200", "seq": "2048", "gpu": "V100-32GB", "gpus": "8", "gpus_per_node": "8",
            "tp": "1", "pp": "1", "dp": "8", "zero": "1", "recompute": "full", "global_batch": "64",
            "micro_batch": "2", "precision": "fp16", "measured_step_s": "2.0", "stack": "megatron",
            "software": "megatron-lm", "source_id": "test"}
    return {**base, **cells}


def test_a_calibration_row_that_names_a_flash_profile_on_a_v100_is_costed_with_unfused_attention():
    """A row's `software` cell names the profile; the part decides the kernel, as for a plan."""
    _, cluster, training, _, _ = row_inputs(row())
    assert attention_kernel(training, cluster.accelerator) == "unfused"
    on_v100, stated, fused = validate_rows([row(), row(attention="unfused"), row(attention="flash")])
    assert on_v100["predicted_s"] == stated["predicted_s"] > fused["predicted_s"]  # a stated fused kernel wins
    assert any(n.startswith("attention unfused: V100-32GB cannot run FlashAttention-2") for n in on_v100["notes"])
    assert not any("FlashAttention-2" in n for n in stated["notes"] + fused["notes"])
    _, cluster, training, _, _ = row_inputs(row(gpu="A100-80GB", precision="bf16"))
    assert attention_kernel(training, cluster.accelerator) == "flash"


def test_a_row_whose_unfused_scores_could_not_fit_ran_a_fused_kernel_on_a_v100_too():
    """Long sequences on a 16 GB V100: the s x s scores of the fallback cannot fit, so the run had a fused kernel
    (the memory-efficient one), and the row says why it is costed with it."""
    long = row(gpu="V100-16GB", seq="16384", micro_batch="1", global_batch="8", layers="8")
    (result,) = validate_rows([long])
    assert result.get("error") is not None, result.get("error_message")
    assert any(n.startswith("attention flash: unfused attention's 16384 x 16384 scores would not fit V100-16GB memory")
               for n in result["notes"])
    unfused, fused = validate_rows([{**long, "attention": "unfused"}, {**long, "attention": "flash"}])
    assert result["predicted_s"] == fused["predicted_s"] < unfused["predicted_s"]
