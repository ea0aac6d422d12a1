"""Which stack's profile costs a published row (flopwise.plan.software_rule): the `software` cell, the `stack`
cell, the stack the row's text names, else the family of its layout; a CSV in the published format (no software
or stack column) still gets every row predicted with the right profile."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from flopwise.errors import ConfigError
from flopwise.hardware import NO_FLASH_ATTENTION, get_accelerator
from flopwise.plan.software_rule import attention_in_text, infer_software, named_stack, software_for_stack
from flopwise.plan.validate import PROVENANCE_COLUMNS, row_inputs, validate_files, validate_rows
from flopwise.train.config import load_config
from tests.cli_run import run_cli

CALIBRATION = Path(__file__).resolve().parents[2] / "benchmarks" / "planner_calibration"
def row(source: str = "", **cells) -> dict:
    base = dict(source=source, model="Llama-3-8B", layers="32", hidden="4096", heads="32", kv_heads="8",
                ffn="14336", mlp="swiglu", vocab="128256", seq="8192", gpu="H100-SXM", gpus="16",
                gpus_per_node="8", tp="1", pp="1", dp="16", zero="3", recompute="full", global_batch="32",
                micro_batch="2", precision="bf16", measured_step_s="10")
    base.update(cells)
    return base


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("NVIDIA NeMo performance summary 24.07", "te"),
        ("Megatron-Bridge recipes", "te"),
        ("MLPerf Training v4.0, NVIDIA Eos", "te"),
        ("BigScience BLOOM-176B (Megatron-DeepSpeed)", "deepspeed"),
        ("Microsoft DeepSpeed ZeRO-3 blog", "deepspeed"),
        ("torchtitan benchmarks, torch.compile on", "torch-compile"),
        ("torchtitan benchmarks, eager", "torch-eager"),
        ("MosaicML llm-foundry (Composer FSDP)", "torch-eager"),
        ("Narayanan et al. 2021 (Megatron-LM SC21) Table 1", "megatron"),
        ("Korthikanti et al. 2022 Table 5", "megatron"),
        ("Megatron-LM README scaling table", "megatron-lm"),
        ("FlagPerf case llama3_8B-megatron", "megatron-lm"),
        ("DeepSpeed ZeRO-3 on a Hugging Face Llama", "deepspeed-hf"),
        ("EleutherAI GPT-NeoX-20B paper", "deepspeed"),
        ("InternLM/InternEvo training performance doc", "te"),
        ("metaseq OPT-175B logbook", "torch-eager"),
    ],
)
def test_the_stack_the_source_names_picks_the_profile(source, expected):
    model, cluster, training, fixed, notes = row_inputs(row(source))
    assert training.software == expected
    assert any(f"software {expected}" in n for n in notes), notes  # said where it was inferred


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        ({"cp": "2", "zero": "1", "dp": "8"}, "te"),  # context parallel: Megatron-Core / NeMo
        ({"tp": "4", "pp": "2", "dp": "2", "zero": "1"}, "te"),
        ({"precision": "fp8", "zero": "1"}, "te"),
        ({"precision": "mxfp8", "zero": "1"}, "te"),  # block-scaled FP8 too
        ({"precision": "nvfp4", "zero": "1"}, "te"),  # and NVFP4
        ({"zero": "3"}, "torch-compile"),  # FSDP: PyTorch-native (flopwise's own costs)
        ({"zero": "3", "precision": "fp8"}, "torch-compile"),  # FSDP with float8 (torchao), not TE
        ({"zero": "3", "tp": "2", "dp": "8"}, "torch-compile"),  # FSDP + TP (2-D, torchtitan-style)
        ({"zero": "0"}, "torch-compile"),
        # torchao's row-wise recipes are PyTorch-native whatever the layout (Transformer Engine has none)
        ({"precision": "float8 rowwise", "tp": "2", "dp": "4", "zero": "1"}, "torch-compile"),
        ({"precision": "rowwise_with_gw_hp", "zero": "0"}, "torch-compile"),
    ],
)
def test_a_row_that_names_no_stack_is_costed_as_its_layouts_family(cells, expected):
    _, _, training, _, notes = row_inputs(row("some lab's cluster", **cells))
    assert training.software == expected and "no stack named" in " ".join(notes)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("BloombergGPT technical report", "te"),  # not BLOOM: 'bloom' only as a word; TP x PP layout -> te
        ("anemone lab cluster", "te"),  # not NeMo
        ("torchtitan (faster than DeepSpeed ZeRO-3)", "torch-eager"),  # the earliest name wins
        ("Megatron-LM run, checkpoint from Hugging Face", "megatron-lm"),
        ("Megatron-DeepSpeed on Frontier", "deepspeed"),  # the longest name at one place
    ],
)
def test_stack_names_are_whole_words_and_the_earliest_wins(source, expected):
    _, _, training, _, _ = row_inputs(row(source, tp="4", pp="2", dp="2", zero="1"))
    assert training.software == expected


def test_the_source_is_searched_before_the_notes():
    r = row("torchtitan benchmarks", notes="compared with DeepSpeed ZeRO-3 and NeMo")
    _, _, training, _, notes = row_inputs(r)
    assert training.software == "torch-eager" and "in the row's source" in notes[0]


def test_a_stack_cell_is_read_loosely_or_refused():
    assert infer_software(row("", stack="Megatron-DeepSpeed"))[0] == "deepspeed"
    assert infer_software(row("", stack="NeMo 2.0"))[0] == "te"
    assert infer_software(row("", software=" DeepSpeed "))[0] == "deepspeed"
    report = validate_rows([row("", stack="jax-on-gpu")])
    assert "stack 'jax-on-gpu': not a stack the planner knows" in report[0]["error_message"]


def test_the_rows_own_cells_win_and_say_nothing():
    # software cell > stack cell > text
    assert infer_software(row("NVIDIA NeMo", software="deepspeed", stack="fsdp")) == ("deepspeed", "")
    assert infer_software(row("NVIDIA NeMo", stack="fsdp", notes="torch.compile")) == ("torch-compile", "")
    assert infer_software(row("NVIDIA NeMo", stack="megatron")) == ("megatron-lm", "")
    # a caller's profile replaces the inference, not the row's own software cell
    assert row_inputs(row("NVIDIA NeMo"), "torch-eager")[2].software == "torch-eager"
    assert row_inputs(row("x", software="deepspeed"), "torch-eager")[2].software == "deepspeed"


def test_software_for_stack_is_the_calibration_sets_rule():
    assert software_for_stack("nemo") == software_for_stack("other") == "te"
    assert software_for_stack("megatron") == "megatron-lm"  # Megatron-LM as its defaults run it
    assert software_for_stack("deepspeed") == "deepspeed"  # Megatron-DeepSpeed
    assert software_for_stack("deepspeed", "HF transformers LlamaForCausalLM under ZeRO-3") == "deepspeed-hf"
    assert software_for_stack("deepspeed", "HuggingFace LLaMA on ZeRO-2") == "deepspeed-hf"
    assert software_for_stack("deepspeed", "HF GPT2LMHeadModel, eager attention") == "deepspeed-hf"
    # Hugging Face named, but not as the model's library: still Megatron-DeepSpeed
    for text in ("weights converted from HF", "tokenizer from Hugging Face", "BLOOM-176B (BigScience / Hugging Face)",
                 "dense transformers at scale", "the model came from a whf config"):
        assert software_for_stack("deepspeed", text) == "deepspeed", text
    assert software_for_stack("fsdp", "compiled with torch.compile") == "torch-compile"
    assert software_for_stack("torchtitan", "torch.compile off: eager") == "torch-eager"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Megatron-era kernels (fused softmax, no flash attention)", "unfused"),
        ("no --recompute-activations, no --use-flash-attn, no --swiglu", "unfused"),  # a negated flag
        ("HF GPT-2, eager PyTorch attention (no flash attention)", "unfused"),
        ("attn_implementation='eager'", "unfused"),
        ("Megatron-DeepSpeed with --use-flash-attn-v2", "flash"),
        ("torch.compile (turns off flash-attn: torch SDPA)", "flash"),
        ("FlashAttention enabled (README footnote)", "flash"),
        ("splash attention kernels; nothing said", None),
        ("FlashAttention was not used", "unfused"),  # negated after the mention
        ("flash attention disabled", "unfused"),
        ("use_flash_attn=False", "unfused"),
        ("--no-flash-attn", "unfused"),
        ("did not use flash attention", "unfused"),
        ("not using SDPA", "unfused"),
        ("SDPA, no flash-attn package installed", None),  # both: undecided, the profile's own
        ("FlashAttention-2 (not FlashAttention-3)", None),
    ],
)
def test_the_attention_kernel_a_text_names(text, expected):
    said = attention_in_text(text)
    assert (said[0] if said else None) == expected


def test_a_rows_attention_kernel_overrides_its_stacks():
    """A row whose notes say its attention kernel differs from its stack's profile is costed with that kernel (and
    says so); an `attention` cell wins over the text; the same kernel as the profile's is kept (it matters only on a
    part without FlashAttention-2: tests/plan/test_attention_fallback.py) and costs the same."""
    base = row("Megatron-LM run", tp="2", dp="8", zero="1", recompute="none")
    _, _, flash, _, _ = row_inputs(base)
    _, _, unfused, _, notes = row_inputs({**base, "notes": "2021 code: no flash attention"})
    assert flash.software == unfused.software == "megatron-lm"
    assert flash.attention is None and unfused.attention == "unfused" and unfused.profile.attention == "unfused"
    assert "attention unfused: the row's text says 'no flash attention'" in notes
    said_flash = {**base, "notes": "no flash attention", "attention": "flash"}
    assert row_inputs(said_flash)[2].attention == "flash"
    assert validate_rows([said_flash])[0]["predicted_s"] == validate_rows([base])[0]["predicted_s"]
    assert row_inputs({**base, "attention": "unfused"})[2].attention == "unfused"
    fast, slow = validate_rows([base, {**base, "notes": "no flash attention"}])
    assert slow["predicted_s"] > fast["predicted_s"]  # the s^2 scores, softmax and their traffic
    assert validate_rows([{**base, "attention": "paged"}])[0]["error_message"].startswith(
        "column 'attention' = 'paged': must be one of flash, fa2, fa3, unfused")
    # the citation names documents, not the run's kernel
    assert row_inputs({**base, "citation": "github.com/Dao-AILab/flash-attention"})[2].attention is None


def test_plan_attention_option(tmp_path, capsys):
    args = ("plan", "--preset", "nano", "--gpu", "A100-80GB", "--gpus", "8", "--global-batch", "64", "--top", "1")
    code, out, err = run_cli(capsys, *args, "--software", "torch-eager", "--attention", "unfused", "--json")
    assert code == 0 and json.loads(out)["training"]["attention"] == "unfused", err
    code, out, err = run_cli(capsys, *args, "--attention", "unfused", "--write-config", tmp_path / "job.toml")
    assert code == 2 and "flopwise's trainer runs SDPA" in err and not (tmp_path / "job.toml").exists()
    code, out, err = run_cli(capsys, *args, "--attention", "FLASH", "--write-config", tmp_path / "job.toml")
    assert code == 0 and (tmp_path / "job.toml").exists(), err  # its own kernel: nothing overridden
    code, out, err = run_cli(capsys, *args, "--attention", "paged")
    assert code == 2 and "attention = 'paged': must be one of flash, fa2, fa3, unfused" in err
    v100 = [a if a != "A100-80GB" else "V100-32GB" for a in args]  # no FlashAttention: the kernel it falls back to
    code, out, err = run_cli(capsys, *v100, "--software", "megatron-lm", "--json")
    assert code == 0 and json.loads(out)["training"]["attention"] == "unfused", err
    code, out, err = run_cli(capsys, *v100, "--software", "megatron-lm", "--attention", "flash", "--json")
    assert code == 0 and json.loads(out)["training"]["attention"] == "flash", err


def calibration_rows() -> list[dict]:
    rows = []
    for path in sorted(CALIBRATION.glob("*.csv")):
        with path.open(newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


def test_calibration_rows_in_the_published_format_are_all_predicted():
    """Without the software, stack, notes and citation columns (a CSV in the published format), every calibration
    row whose layout the planner can express still gets a prediction: rows of stacks flopwise's own trainer cannot
    run (context parallelism, FSDP inside pipeline stages) are costed with their stack's profile, not refused; and
    where the source text names the stack, the profile is the one the row's own columns give."""
    rows = calibration_rows()
    assert len(rows) >= 200
    stripped = [{k: v for k, v in r.items() if k not in PROVENANCE_COLUMNS} for r in rows]
    report = validate_rows(stripped)
    refused = [r.get("error_message") for r in report if "predicted_s" not in r]
    # the one that was refused until 2026-12-05, Megatron-Core counting the embedding and the loss as pipeline layers
    # (126 + 2 = 128 stages), is predicted too, and so are torchao's rowwise_with_gw_hp runs (sets 34, 35, 37) and
    # Megatron-LM's pipelines of more stages than micro-batches (set 37), refused until 2026-12-06, and set 41's
    # three MXFP4 runs, refused by name until mxfp4 became a precision
    assert not refused, refused
    assert sum("gw_hp" in r["precision"] for r in rows) >= 2
    same_family = {"te": {"te"}, "deepspeed": {"deepspeed"}, "megatron": {"megatron"}, "megatron-lm": {"megatron-lm"},
                   "deepspeed-hf": {"deepspeed-hf"},
                   "torch-eager": {"torch-eager", "torch-compile"}, "torch-compile": {"torch-eager", "torch-compile"}}
    named = [(o, g) for o, g in zip(rows, report, strict=True) if named_stack(o["source"]) and "predicted_s" in g]
    # a Megatron-family row on V100s is read as Megatron-LM's legacy kernels (no FlashAttention there), which its own
    # columns say as megatron-lm plus notes saying it ran no flash attention
    legacy = {o["source_id"] for o in rows if o["gpu"] in NO_FLASH_ATTENTION and o["software"] in ("te", "megatron-lm")}
    wrong = {o["source_id"] for o, g in named
             if g["software"] not in same_family[o["software"]] | ({"megatron"} if o["source_id"] in legacy else set())}
    # the known misses, whose source names another stack than the one that ran them or keeps the model's library to
    # the notes: ColossalAI's Lightning benchmark ran DeepSpeed; the Megatron-LLaMA README's comparison row and
    # ATorch's DeepSpeed 3D rows ran a Hugging Face model under DeepSpeed (read as Megatron-DeepSpeed); tohtana's
    # benchmark compares DeepSpeed AutoTP with PyTorch's TP, and its source names DeepSpeed first; Lightning's nanoGPT
    # benchmark ran Fabric's DeepSpeed strategy, and its source names Lightning Fabric first; BigScience's 2021 notes
    # ran plain Megatron-LM, and their source names BigScience (Megatron-DeepSpeed's BLOOM) first
    known = {"colossalai-lightning-gpt2xl-a100-40gb", "megatron-llama-2023-hf-deepspeed",
             "atorch-llama2-7b-ds3d-a100-2023-11", "tohtana-benchmark-tp-qwen3-32b-h100-2025-12",
             "lightning-nanogpt-fabric-deepspeed-a100-2023-01", "bigscience-gpt2-16gb-megatron-v100-2021-05",
             "bigscience-gpt2-meg-base-v100-32gb-2021-05"}
    assert len(named) >= 180 and wrong <= known, wrong - known


def test_validate_software_option_library_and_cli(tmp_path, capsys):
    path = tmp_path / "runs.csv"
    cells = row("some lab")
    path.write_text(",".join(cells) + "\n" + ",".join(cells.values()) + "\n")
    inferred = validate_files([path])["rows"][0]
    forced = validate_files([path], "torch-eager")["rows"][0]
    assert inferred["software"] == "torch-compile" and forced["software"] == "torch-eager"
    assert forced["predicted_s"] > inferred["predicted_s"]  # eager: unfused elementwise traffic
    code, out, err = run_cli(capsys, "plan", "validate", path, "--software", "torch-eager", "--json")
    assert code == 0 and json.loads(out)["rows"][0]["software"] == "torch-eager", err
    code, out, err = run_cli(capsys, "plan", "validate", path, "--json")
    got = json.loads(out)["rows"][0]
    assert code == 0 and got["software"] == "torch-compile" and "no stack named" in got["notes"][0]  # which, and why
    code, out, err = run_cli(capsys, "plan", "validate", path, "--software", "jax")
    assert code == 2 and "--software 'jax': must be one of" in err and "Traceback" not in err


def test_planner_accuracy_published_format_hides_the_provenance_columns(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("planner_accuracy", CALIBRATION.parent / "planner_accuracy.py")
    accuracy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(accuracy)
    rows = accuracy.load_rows([CALIBRATION / "fresh_holdout_3.csv"])
    own = accuracy.evaluate(rows)
    hidden = accuracy.evaluate(rows, published_format=True)
    assert [r["source_id"] for r in own["rows"]] == [r["source_id"] for r in hidden["rows"]]  # still grouped
    # with its own columns no row's profile is inferred; hidden, every row's is, and says so
    assert not any("software " in " ".join(r.get("planner_notes") or []) for r in own["rows"])
    assert all("software " in " ".join(r.get("planner_notes") or []) for r in hidden["rows"])


@pytest.mark.parametrize(
    ("cell", "text", "read"),
    [("precision", "BF16", "bf16"), ("precision", "amp_bf16", "bf16"), ("precision", "FP8 (delayed scaling)", "fp8"),
     ("precision", "bf16_with_mxfp8_mixed", "mxfp8"), ("precision", "fp8_mx", "mxfp8"),
     ("precision", "FP8 (MXFP8 recipe)", "mxfp8"), ("precision", "NVFP4", "nvfp4"),
     ("precision", "bf16_with_nvfp4_mixed", "nvfp4"), ("precision", "FP4", "nvfp4"), ("precision", "MXFP4", "mxfp4"),
     ("precision", "fp4_mx", "mxfp4"),
     ("precision", "fp4 (mxfp4 recipe)", "mxfp4"),
     ("precision", "float8 rowwise", "fp8-rowwise"), ("precision", "FP8 (row-wise scaling)", "fp8-rowwise"),
     ("precision", "fp8-rowwise", "fp8-rowwise"), ("precision", "rowwise", "fp8-rowwise"),
     ("precision", "float8 rowwise_with_gw_hp", "fp8-rowwise-gw-hp"), ("precision", "FP8 rowwise gw-hp",
                                                                        "fp8-rowwise-gw-hp"),
     ("precision", "rowwise_with_gw_hp", "fp8-rowwise-gw-hp"), ("precision", "rowwise gw_hp", "fp8-rowwise-gw-hp"),
     ("precision", "float8 tensorwise", "fp8"),
     ("recompute", "True", "full"), ("recompute", "false", "none"), ("recompute", "Full", "full"),
     ("mlp", "SwiGLU", "swiglu")],
)
def test_cells_are_read_as_sources_write_them(cell, text, read):
    model, _, training, fixed, notes = row_inputs(row("torchtitan", **{cell: text}))
    got = {"precision": training.precision, "recompute": fixed.get("recompute"), "mlp": model.mlp}[cell]
    assert got == read
    if text.lower() != read:  # a rewritten cell says so
        assert any(repr(text) in n for n in notes), notes


@pytest.mark.parametrize("text", ["INT4", "int8"])
def test_a_recipe_no_precision_costs_is_refused_not_read_as_another_precision(text):
    with pytest.raises(ConfigError, match=f"precision = '{text.lower()}': must be one of"):  # as the source wrote it
        row_inputs(row("torchtitan", precision=text))


def test_unreadable_cells_are_the_rows_reason():
    report = validate_rows([row("torchtitan", precision="int4"), row("torchtitan", gpu="MI250X"), row("torchtitan")])
    assert "precision = 'int4'" in report[0]["error_message"]
    assert "unknown accelerator 'MI250X'" in report[1]["error_message"]
    assert report[2]["predicted_s"] > 0
    _, cluster, _, _, notes = row_inputs(row("torchtitan", gpu=""))
    assert cluster.accelerator.name == "A100-80GB" and any("gpu blank" in n for n in notes)


def test_plan_compile_option(tmp_path, capsys):
    """--compile plans flopwise's trainer with compiled blocks (faster: fused elementwise kernels) and writes
    train.compile = true into the job it writes; another stack's profile refuses it."""
    args = ("plan", "--preset", "tiny", "--gpu", "H100-SXM", "--gpus", "8", "--global-batch", "64", "--top", "1")
    code, out, err = run_cli(capsys, *args, "--json")
    assert code == 0, err
    eager = json.loads(out)
    code, out, err = run_cli(capsys, *args, "--compile", "--json", "--write-config", tmp_path / "job.toml")
    assert code == 0, err
    compiled = json.loads(out)
    assert compiled["training"]["compiled"] and not eager["training"]["compiled"]
    assert compiled["plans"][0]["step_time_s"] < eager["plans"][0]["step_time_s"]
    assert load_config(tmp_path / "job.toml").train.compile
    code, out, err = run_cli(capsys, *args, "--software", "torch-compile", "--compile")
    assert code == 2 and "compiled applies to flopwise" in err


def test_a_megatron_family_run_on_a_gpu_without_flash_attention_ran_megatrons_legacy_kernels():
    """FlashAttention needs Turing or newer, so a Megatron-LM (or Megatron-style layout) row on V100s is costed with
    the legacy 'megatron' profile (unfused softmax, reduction after the backward), and says why; a row's own
    `software` cell still wins, and PyTorch-native rows keep their profile."""
    v100 = dict(gpu="V100-16GB", gpus="8", tp="2", dp="4", zero="0", precision="fp16", heads="32", kv_heads="32")
    _, _, training, _, notes = row_inputs(row("DLPerf Megatron-LM GPT on V100", **v100))
    assert training.software == "megatron" and training.profile.attention == "unfused"
    assert any("on V100-16GB, which cannot run FlashAttention-2" in n for n in notes), notes
    assert row_inputs(row("", **v100))[2].software == "megatron"  # the layout's Megatron-Core guess, too
    assert row_inputs(row("DLPerf Megatron-LM GPT on V100", software="te", **v100))[2].software == "te"
    assert row_inputs(row("torchtitan", **{**v100, "tp": "1", "dp": "8", "zero": "3"}))[2].software == "torch-eager"
    assert row_inputs(row("DLPerf Megatron-LM GPT on A100", **{**v100, "gpu": "A100-80GB"}))[2].software == "megatron-lm"
    # a stack with kernels of its own ('other': InternEvo and the like) is not Megatron's
    assert row_inputs(row("InternEvo on V100", **v100))[2].software == "te"
    # an accelerator file that says so is read the same way
    old_part = dataclasses.replace(get_accelerator("A100-80GB"), name="old-part", flash_attention=False)
    assert infer_software(row("DLPerf Megatron-LM GPT", **v100), tp=2, accelerator=old_part)[0] == "megatron"
    assert infer_software(row("DLPerf Megatron-LM GPT", **v100), tp=2, accelerator=get_accelerator("A100-80GB"))[0] \
        == "megatron-lm"
