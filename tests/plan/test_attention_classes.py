"""Fused attention by kernel class on Hopper and newer: a run states FlashAttention-2 or an FA3-class kernel
(FlashAttention-3, cuDNN's fused attention) and is costed at that class's rate (spec.FLASH_CLASSES,
spec.attention_class, spec.refuse_attention); a plan on its profile's FA2 says what FA3 would change."""

import dataclasses
import json

import pytest

from flopwise.errors import ConfigError
from flopwise.hardware import CATALOGUE
from flopwise.layout import Layout
from flopwise.models.config import ModelConfig
from flopwise.plan.cost import FA3_HOPPER_EFFICIENCY, FLASH_EFFICIENCY, CostModel, fa3_over_fa2
from flopwise.plan.search import search
from flopwise.plan.spec import Cluster, Training, attention_class
from flopwise.plan.validate import validate_rows
from tests.cli_run import run_cli

H100, A100, V100 = CATALOGUE["H100-SXM"], CATALOGUE["A100-80GB"], CATALOGUE["V100-32GB"]
MODEL = ModelConfig(vocab_size=32000, layers=4, hidden=2048, heads=16, ffn=8192, seq_len=8192, lfa=False, mlp="swiglu")
LAYOUT = Layout(dp=8, zero=2, micro_batch=1)


def costed(acc=H100, **training):
    cm = CostModel(MODEL, Cluster(acc, 8), Training(64, **training))
    return cm, cm.evaluate(LAYOUT)


def test_a_stated_class_sets_the_attention_rate_and_nothing_else():
    """fa3 on a torch-compile run: its attention at FA3's rate, the rest of the step and the memory unchanged; fa2 is
    the profile's own, the same plan as saying nothing."""
    default_cm, default = costed(software="torch-compile")
    fa2_cm, fa2 = costed(software="torch-compile", attention="fa2")
    fa3_cm, fa3 = costed(software="torch-compile", attention="fa3")
    assert fa2.step_time == default.step_time and fa2.memory == default.memory
    assert fa3_cm.attention_rate == pytest.approx(H100.peak_flops * FA3_HOPPER_EFFICIENCY)
    assert fa3_cm.attention_rate == pytest.approx(default_cm.attention_rate * fa3_over_fa2())
    assert fa3.memory == default.memory  # both fused: no s x s tensors either way
    attention = default_cm.layer_compute(1, False, 1)["attention"]
    faster = fa3_cm.layer_compute(1, False, 1)["attention"]
    assert faster[0] == pytest.approx(attention[0] / fa3_over_fa2())
    assert fa3_cm.layer_compute(1, False, 1)["gemm"] == default_cm.layer_compute(1, False, 1)["gemm"]
    assert fa3.step_time < default.step_time
    # a stack whose profile already runs FA3's class: stating it changes nothing; stating FA2 slows it
    te, te_fa2 = costed(software="te")[1], costed(software="te", attention="fa2")[1]
    assert costed(software="te", attention="fa3")[1].step_time == te.step_time < te_fa2.step_time


def test_the_class_a_plan_is_costed_with():
    said = {sw: attention_class(Training(64, software=sw), H100) for sw in ("te", "torch-compile", "deepspeed")}
    assert said == {"te": "fa3", "torch-compile": "fa2", "deepspeed": "unfused"}
    assert attention_class(Training(64, software="torch-compile", attention="fa3"), H100) == "fa3"
    assert attention_class(Training(64, software="te"), A100) == "flash"  # one rate for fused kernels before Hopper
    assert attention_class(Training(64, software="te", precision="fp16"), V100) == "unfused"  # its fallback


@pytest.mark.parametrize("acc, attention, said", [
    (A100, "fa3", "told apart from FlashAttention-2 on parts with FP8 tensor cores"),
    (V100, "fa2", "FlashAttention-2 needs Ampere or newer, and V100-32GB is older"),
    (V100, "fa3", "told apart"),
    (dataclasses.replace(H100, name="timed", attention_efficiency=0.4), "fa3", "rate measured at start-up"),
])
def test_a_class_the_part_cannot_run_or_the_model_cannot_tell_apart_is_refused(acc, attention, said):
    precision = "bf16" if acc.bf16 else "fp16"
    with pytest.raises(ConfigError, match=said):
        CostModel(MODEL, Cluster(acc, 8), Training(64, software="torch-compile", attention=attention,
                                                   precision=precision))
    # flash stays the way to state a fused kernel there
    CostModel(MODEL, Cluster(acc, 8), Training(64, software="torch-compile", attention="flash", precision=precision))


def test_flopwise_s_own_trainer_takes_its_own_class_only():
    with pytest.raises(ConfigError, match="flopwise's trainer runs SDPA"):
        Training(64, software="flopwise", attention="fa2")
    assert costed(software="flopwise", attention="fa3")[1].step_time == costed(software="flopwise")[1].step_time


def test_fa2_where_fused_kernels_share_one_rate_is_flash():
    """On an A100 FlashAttention-2 is what flash means: stating it is not refused and changes nothing."""
    assert costed(A100, software="torch-eager", attention="fa2")[1].step_time == \
        costed(A100, software="torch-eager")[1].step_time


def test_a_class_in_full_precision_is_refused_and_not_suggested():
    """FlashAttention and cuDNN's kernels take 2-byte inputs: an fp32 or tf32 run states no class, and its plan does
    not suggest one."""
    for precision in ("fp32", "tf32"):
        with pytest.raises(ConfigError, match=f"run in bf16 or fp16, not {precision}"):
            costed(software="torch-eager", attention="fa3", precision=precision)
        notes = search(MODEL, Cluster(H100, 8), Training(64, software="torch-eager", precision=precision), top=1).notes
        assert not any(n.startswith("attention:") for n in notes)


def test_stating_flash_keeps_the_note_a_fallback_part_gets_its_own():
    (note,) = [n for n in search(MODEL, Cluster(H100, 8), Training(64, software="torch-eager", attention="flash"),
                                 top=1).notes if n.startswith("attention:")]
    assert "--attention fa3" in note
    old_fp8 = dataclasses.replace(H100, name="fp8-no-fa2", flash_attention=False)  # a file saying both
    training = Training(64, software="torch-eager")
    assert attention_class(training, old_fp8) == "flash"  # its fallback, not FA2
    notes = search(MODEL, Cluster(old_fp8, 8), training, top=1).notes
    assert any("cannot run FlashAttention-2" in n for n in notes) and not any(n.startswith("attention:") for n in notes)


def test_fused_attention_never_outruns_the_part_s_gemms():
    """AMD's MI3xx sustain a smaller share of their peak in GEMMs (MAMF) than FA3's rate of an H100's: their attention
    is capped at their GEMM rate; the NVIDIA parts' rates are below it already."""
    mi300x = CATALOGUE["MI300X"]
    cm, _ = costed(mi300x, software="te")
    assert cm.attention_rate == cm.gemm_rate < mi300x.peak_flops * FA3_HOPPER_EFFICIENCY
    for name in ("H100-SXM", "H200", "B200", "GB200"):
        cm, _ = costed(CATALOGUE[name], software="te")
        assert cm.attention_rate == pytest.approx(CATALOGUE[name].peak_flops * FA3_HOPPER_EFFICIENCY)


def test_a_plan_on_its_profile_s_fa2_says_what_fa3_would_change():
    """The note names the option and the first plan's step under FA3, as that layout is costed with it."""
    result = search(MODEL, Cluster(H100, 8), Training(64, software="torch-eager"), top=1)
    (note,) = [n for n in result.notes if n.startswith("attention:")]
    best = result.plans[0]
    fa3 = CostModel(MODEL, Cluster(H100, 8), Training(64, software="torch-eager", attention="fa3")).evaluate(best.layout)
    assert "--attention fa3" in note and f"at {fa3_over_fa2():.1f}x that" in note
    assert f"the first plan's step {fa3.step_time:.3g} s, {fa3.step_time / best.step_time - 1:+.0%}" in note
    assert fa3.step_time < best.step_time
    quiet = [search(MODEL, Cluster(acc, 8), Training(64, **t), top=1).notes
             for acc, t in ((H100, {"software": "torch-eager", "attention": "fa2"}),  # stated: nothing to suggest
                            (H100, {"software": "te"}), (A100, {"software": "torch-eager"}))]
    assert not any(n.startswith("attention:") for notes in quiet for n in notes)


def test_the_command_takes_a_class_and_reports_it(capsys):
    args = ("plan", "--layers", 4, "--hidden", 2048, "--heads", 16, "--ffn", 8192, "--vocab", 32000, "--seq", 8192,
            "--gpu", "H100-SXM", "--gpus", 8, "--global-batch", 64, "--software", "torch-compile", "--top", 1, "--json")
    code, out, _ = run_cli(capsys, *args, "--attention", "FA3")
    assert code == 0
    report = json.loads(out)
    assert report["training"]["attention"] == "flash" and report["training"]["attention_class"] == "fa3"
    code, out, _ = run_cli(capsys, *args)
    assert json.loads(out)["training"]["attention_class"] == "fa2"
    assert json.loads(out)["plans"][0]["step_time_s"] > report["plans"][0]["step_time_s"]
    code, _, err = run_cli(capsys, *args[:-1], "--gpu", "A100-80GB", "--attention", "fa3")
    assert code == 2 and "state flash" in err
    code, out, _ = run_cli(capsys, "plan", "--help")
    words = " ".join(out.replace("│", " ").split())  # the help's box, unwrapped
    assert "torch-compile fa2" in words and "te fa3" in words and "deepspeed unfused" in words


def test_a_calibration_row_states_a_class_in_its_attention_column():
    row = {"model": "Llama", "layers": "4", "hidden": "2048", "heads": "16", "kv_heads": "16", "ffn": "8192",
           "mlp": "swiglu", "vocab": "32000", "seq": "8192", "gpu": "H100-SXM", "gpus": "8", "tp": "1", "pp": "1",
           "dp": "8", "zero": "2", "recompute": "none", "global_batch": "64", "micro_batch": "1", "precision": "bf16",
           "measured_step_s": "1.0", "stack": "torchtitan", "software": "torch-compile", "source_id": "test"}
    blank, fa3, on_a100 = validate_rows([row, {**row, "attention": "fa3"},
                                         {**row, "attention": "fa3", "gpu": "A100-80GB"}])
    assert fa3["predicted_s"] < blank["predicted_s"]
    assert on_a100.get("predicted_s") is None and "state flash" in on_a100["error_message"]
    # the text names no class for a row: "cuDNN" in its notes reads as a fused kernel at the profile's class
    (noted,) = validate_rows([{**row, "notes": "SDPA with the cuDNN SDPA backend"}])
    assert noted["predicted_s"] == blank["predicted_s"]


def test_fa2_is_capped_too_and_a_part_without_fa2_has_one_fused_rate():
    slow_gemms = dataclasses.replace(H100, name="slow-gemms", gemm_efficiency=0.15)  # below FA2's fitted 0.21
    cm, _ = costed(slow_gemms, software="torch-eager")
    assert cm.attention_rate == pytest.approx(cm.gemm_rate)
    no_fa2 = dataclasses.replace(H100, name="fp8-no-fa2", flash_attention=False)  # a file saying both
    cm, _ = costed(no_fa2, software="torch-eager")
    assert cm.attention_rate == pytest.approx(cm.gemm_rate * FLASH_EFFICIENCY)  # its memory-efficient kernel
    with pytest.raises(ConfigError, match="state flash"):
        costed(no_fa2, software="torch-eager", attention="fa3")


def test_the_suggested_speed_up_is_the_part_s_own():
    """On an MI300X FA3's rate is capped at the GEMMs', so the note gives that part's ratio, not Hopper's."""
    mi300x = CATALOGUE["MI300X"]
    (note,) = [n for n in search(MODEL, Cluster(mi300x, 8), Training(64, software="torch-eager"), top=1).notes
               if n.startswith("attention:")]
    assert f"at {fa3_over_fa2(None, mi300x):.1f}x that" in note and fa3_over_fa2(None, mi300x) < fa3_over_fa2()
