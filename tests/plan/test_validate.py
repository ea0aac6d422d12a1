import pytest

from flopwise.plan.validate import row_inputs, row_plan, summarise, validate_files, validate_rows

FILES = ("megatron_sc21_table1.csv", "korthikanti_2022.csv")


@pytest.mark.parametrize("name", FILES)
def test_validation_accuracy_per_file(published, name):
    report = validate_files([published / name])
    summary = report["summary"]
    assert summary["predicted"] == summary["rows"] >= 9  # every row predicted
    assert summary["median_abs_error"] <= 0.10, summary
    assert summary["max_abs_error"] <= 0.20, summary


def test_validation_accuracy_all_rows(published):
    report = validate_files(sorted(published.glob("*.csv")))
    s = report["summary"]
    assert s["rows"] == 19 and s["predicted"] == 19
    assert s["median_abs_error"] <= 0.10 and s["max_abs_error"] <= 0.20
    for row in report["rows"]:
        assert row["predicted_s"] > 0 and row["abs_error"] == pytest.approx(abs(row["error"]))
        assert sum(row["breakdown_percent"].values()) == pytest.approx(100.0)


def test_row_inputs_blank_cells_are_left_to_the_search():
    row = {
        "source": "Narayanan et al. 2021 (Megatron-LM SC21) Table 1",
        "model": "x",
        "layers": "24",
        "hidden": "2304",
        "heads": "24",
        "kv_heads": "",
        "ffn": "9216",
        "mlp": "gelu",
        "vocab": "51200",
        "seq": "2048",
        "gpu": "A100-80GB",
        "gpus": "32",
        "gpus_per_node": "8",
        "intra_node_GBps": "300",
        "inter_node_GBps_per_gpu": "25",
        "tp": "1",
        "pp": "",
        "dp": "",
        "vpp": "",
        "cp": "",
        "zero": "",
        "sequence_parallel": "",
        "recompute": "full",
        "global_batch": "512",
        "micro_batch": "",
        "precision": "fp16",
        "measured_step_s": "3.528",
    }
    model, cluster, training, fixed, notes = row_inputs(row)
    assert fixed == {"tp": 1, "recompute": "full"}
    assert model.kv_heads == 24 and not model.lfa and model.mlp == "gelu"
    assert training.software == "megatron" and cluster.gpus == 32


def test_vpp_that_cannot_split_the_stage_is_reduced_with_a_note():
    row = {
        "source": "Korthikanti et al. 2022",
        "layers": "128",
        "hidden": "256",
        "heads": "4",
        "ffn": "1024",
        "vocab": "512",
        "seq": "128",
        "gpus": "64",
        "tp": "1",
        "pp": "64",
        "dp": "1",
        "vpp": "3",
        "global_batch": "64",
        "measured_step_s": "1",
    }
    _, _, _, fixed, notes = row_inputs(row)
    assert fixed["vpp"] == 2 and any("vpp=3" in n for n in notes)


def _long_sequence_row(**cells) -> dict:
    """A Megatron-DeepSpeed GPT run (the 'deepspeed' profile: unfused attention) at a 64k sequence on A100-40GBs."""
    row = {"source": "Megatron-DeepSpeed long-sequence table", "layers": "16", "hidden": "2048", "heads": "16",
           "ffn": "8192", "vocab": "50304", "seq": "65536", "gpu": "A100-40GB", "gpus": "8", "tp": "8", "pp": "1",
           "dp": "1", "sequence_parallel": "1", "recompute": "full", "micro_batch": "1", "global_batch": "1",
           "precision": "fp16", "measured_step_s": "10"}
    return {**row, **cells}


def test_scores_that_cannot_fit_mean_the_run_used_a_fused_kernel():
    """A run that ran did not hold s x s attention scores its GPUs could not: where the profile's unfused attention
    would not fit and the row does not say which kernel it ran, the row is costed with flash attention, and says so;
    a row that says it ran unfused attention keeps it (costed anyway, noted as not fitting)."""
    model, _, training, plan, notes = row_plan(_long_sequence_row())
    assert training.software == "deepspeed" and training.profile.attention == "flash"
    assert any("65536 x 65536 scores would not fit A100-40GB memory" in n for n in notes)
    assert "predicted not to fit memory" not in notes and plan.fits
    _, _, said, stated_plan, said_notes = row_plan(_long_sequence_row(attention="unfused"))
    assert said.profile.attention == "unfused" and "predicted not to fit memory" in said_notes
    assert stated_plan.step_time > plan.step_time  # the s^2 softmax and dropout passes cost time as well as memory
    # at a short sequence the unfused scores fit: the profile's own kernel stands
    short = row_plan(_long_sequence_row(seq="2048"))[2]
    assert short.profile.attention == "unfused"
    rows = validate_rows([_long_sequence_row()])
    assert rows[0]["predicted_s"] == pytest.approx(plan.step_time)


def test_a_layout_that_needs_a_fused_kernel_is_costed_with_one_and_says_why():
    """Context parallelism needs a fused attention kernel: a Megatron-DeepSpeed row (unfused profile) at cp = 2 that
    does not say which kernel it ran is costed with flash attention and says the layout needed it (not memory); one
    that says it ran unfused attention keeps the refusal as its reason."""
    row = _long_sequence_row(seq="2048", cp="2", tp="4", gpu="A100-80GB")
    _, _, training, plan, notes = row_plan(row)
    assert training.profile.attention == "flash" and plan.layout.cp == 2
    assert any("the layout needs it" in n for n in notes) and not any("would not fit" in n for n in notes), notes
    refused = validate_rows([{**row, "attention": "unfused"}])[0]
    assert "predicted_s" not in refused and "fused" in refused["error_message"], refused


def test_a_head_dim_column_sets_the_attention_width():
    """Models whose attention is wider than their hidden size (Qwen3-32B: 64 heads x 128 over 5120) give an optional
    `head_dim` column: the attention projections are heads x head_dim wide, and the model has the weights it has."""
    from flopwise.flops import param_counts

    qwen = {"source": "x", "layers": "64", "hidden": "5120", "heads": "64", "kv_heads": "8", "ffn": "25600",
            "mlp": "swiglu", "vocab": "151936", "seq": "2048", "gpu": "H100-SXM", "gpus": "8", "tp": "8",
            "global_batch": "8", "micro_batch": "1", "measured_step_s": "1"}
    plain = row_inputs(qwen)[0]
    wide = row_inputs({**qwen, "head_dim": "128"})[0]
    assert plain.head_dim == 80 and wide.head_dim == 128 and wide.attn_dim == 8192
    assert 31.0e9 < param_counts(wide).layers_matmul < 31.4e9  # Qwen3-32B's model card: 31.2B without embeddings
    assert param_counts(wide).total > param_counts(plain).total
    assert "error_message" in validate_rows([{**qwen, "head_dim": "x"}])[0]


def test_an_fp8_all_gather_column_says_the_weights_were_gathered_in_fp8():
    row = {"source": "x", "layers": "32", "hidden": "4096", "heads": "32", "kv_heads": "8", "ffn": "14336",
           "mlp": "swiglu", "vocab": "128256", "seq": "8192", "gpu": "H100-SXM", "gpus": "8", "tp": "1", "zero": "3",
           "global_batch": "8", "micro_batch": "1", "precision": "float8", "software": "torch-compile",
           "measured_step_s": "1"}
    assert not row_inputs(row)[2].fp8_all_gather  # blank: torchtitan's and Megatron's default, off
    for cell, on in (("true", True), ("Yes", True), ("1", True), ("false", False), ("off", False)):
        assert row_inputs({**row, "fp8_all_gather": cell})[2].fp8_all_gather is on
    faster = validate_rows([{**row, "fp8_all_gather": "true"}])[0]["predicted_s"]
    assert faster < validate_rows([row])[0]["predicted_s"]  # no cast of each gathered weight on each micro-batch
    for bad, words in (({"fp8_all_gather": "maybe"}, "expected true or false"),
                       ({"fp8_all_gather": "true", "precision": "bf16"}, "needs precision = fp8")):
        assert words in validate_rows([{**row, **bad}])[0]["error_message"]


def test_a_printed_peak_memory_is_set_against_the_planned_one():
    """Rows that give the peak memory per GPU their run printed (`measured_memory_gib`, `memory_measure`) get the
    planned peak beside it: a device total against the whole plan, torch's counters (or an unstated figure) against it
    less the framework's reserve, as the trainer's forecast compares them; a bad memory cell is said beside the step's
    prediction, and rows without the columns are reported as before."""
    from flopwise.hardware import GIB
    from flopwise.plan.memory import RESERVED_BYTES
    from flopwise.train.forecast import stage_table, tensor_bytes

    row = {"source": "x", "layers": "32", "hidden": "4096", "heads": "32", "kv_heads": "8", "ffn": "14336",
           "mlp": "swiglu", "vocab": "128256", "seq": "8192", "gpu": "H100-SXM", "gpus": "8", "tp": "1", "pp": "1",
           "zero": "3", "recompute": "full", "global_batch": "8", "micro_batch": "1", "measured_step_s": "1.5"}
    bare, reserved, device = validate_rows([row, {**row, "measured_memory_gib": "40", "memory_measure": "Reserved"},
                                            {**row, "measured_memory_gib": "40", "memory_measure": "device"}])
    assert "memory_error" not in bare and "measured_memory_gib" not in bare
    whole = bare["peak_memory_gb"] * 1e9  # the plan's peak: tensors plus the CUDA context and workspaces
    plan = row_plan(row)[3]
    assert whole == pytest.approx(max(s["total"] for s in stage_table(plan)))
    assert reserved["memory_measure"] == "reserved" and reserved["measured_memory_gib"] == 40
    assert reserved["planned_memory_gib"] * GIB == pytest.approx(whole - RESERVED_BYTES)
    assert reserved["planned_memory_gib"] * GIB == pytest.approx(max(tensor_bytes(s) for s in stage_table(plan)))
    assert reserved["memory_error"] == pytest.approx((whole - RESERVED_BYTES) / (40 * GIB) - 1)
    assert device["planned_memory_gib"] * GIB == pytest.approx(whole)
    assert device["memory_error"] == pytest.approx(whole / (40 * GIB) - 1)
    unstated = validate_rows([{**row, "measured_memory_gib": "40"}])[0]
    assert unstated["memory_measure"] is None and unstated["memory_error"] == pytest.approx(reserved["memory_error"])
    # a bad memory cell is said beside the step's prediction: not a crash, not a silent skip, not the step lost
    for bad, words in ((dict(measured_memory_gib="40", memory_measure="smi"), "memory_measure"),
                       (dict(memory_measure="reserved"), "'measured_memory_gib' is blank"),
                       (dict(measured_memory_gib="40 GiB"), "not a number"),
                       (dict(measured_memory_gib="-3"), "measured_memory_gib")):
        said = validate_rows([{**row, **bad}])[0]
        assert words in said["memory_message"] and said["error"] == pytest.approx(bare["error"]), bad
        assert "memory_error" not in said
    # a row whose step cannot be planned keeps what it printed
    lost = validate_rows([{**row, "gpu": "Z9000", "measured_memory_gib": "40"}])[0]
    assert "error_message" in lost and lost["measured_memory_gib"] == 40 and "memory_error" not in lost
    s = summarise([bare, reserved, device, lost])
    assert s["memory_rows"] == 2 and s["predicted"] == 3
    assert s["memory_max_abs_error"] == pytest.approx(max(abs(reserved["memory_error"]), abs(device["memory_error"])))
    assert summarise([bare])["memory_rows"] == 0 and summarise([bare])["memory_median_abs_error"] is None


QWEN3_30B = {"source": "x", "layers": "48", "hidden": "2048", "heads": "32", "kv_heads": "4", "ffn": "768",
             "mlp": "swiglu", "vocab": "151936", "seq": "4096", "gpu": "H100-SXM", "gpus": "16", "tp": "1", "pp": "1",
             "cp": "1", "global_batch": "1024", "micro_batch": "1", "measured_step_s": "30", "head_dim": "128",
             "experts": "128", "top_k": "8", "ep": "16"}


def test_mixture_of_experts_rows_take_their_expert_columns():
    """A published MoE row (Qwen3-30B-A3B: 128 experts of 768, top-8, head_dim 128) is a model of that many experts
    with a linear router unless its `router` cell says Yuan 2.0-M32's attention router; its ep is fixed."""
    from flopwise.flops import param_counts

    model, _, _, fixed, _ = row_inputs(QWEN3_30B)
    assert (model.experts, model.top_k, model.ffn, model.router, fixed["ep"]) == (128, 8, 768, "linear", 16)
    counts = param_counts(model)
    assert 30.0e9 < counts.total < 31.0e9 and 3.0e9 < counts.active < 3.6e9  # the model card: 30.5B, 3.3B active
    assert row_inputs({**QWEN3_30B, "router": "attention"})[0].router == "attention"
    assert row_inputs({**QWEN3_30B, "experts": "0", "top_k": "", "ep": ""})[0].experts == 0  # zero: a dense row
    assert row_inputs({**QWEN3_30B, "etp": "1"})[0].experts == 128  # expert TP equal to tp
    shared = row_inputs({**QWEN3_30B, "shared_ffn": "1536"})[0]  # a shared expert (DeepSeek, Llama 4)
    assert shared.shared_ffn == 1536 and param_counts(shared).active - counts.active == 48 * 3 * 2048 * 1536
    assert validate_rows([QWEN3_30B])[0]["predicted_s"] > 0


# DeepSeek-V3 as a row: latent attention (128 heads of 128 + 64 rotated dims, latents 1536 and 512), 3 dense blocks
DEEPSEEK_V3 = {**QWEN3_30B, "layers": "61", "hidden": "7168", "heads": "128", "kv_heads": "128", "ffn": "2048",
               "vocab": "129280", "experts": "256", "top_k": "8", "ep": "64", "shared_ffn": "2048", "head_dim": "128",
               "dense_layers": "3", "dense_ffn": "18432", "attention_variant": "mla", "q_lora_rank": "1536",
               "kv_lora_rank": "512", "rope_head_dim": "64", "gpus": "1024", "tp": "2", "pp": "8", "dp": "64",
               "global_batch": "8192", "seq": "4096"}


def test_a_latent_attention_row_with_leading_dense_blocks_is_deepseek_v3():
    """The model card's 671B total, 37B active (the MTP module aside), from the row's cells."""
    from flopwise.flops import param_counts

    model = row_inputs(DEEPSEEK_V3)[0]
    assert (model.kv_lora_rank, model.q_lora_rank, model.rope_head_dim, model.head_dim) == (512, 1536, 64, 128)
    assert (model.dense_layers, model.dense_ffn, model.moe_layers) == (3, 18432, 58)
    counts = param_counts(model)
    assert 670e9 < counts.total < 673e9 and 36.5e9 < counts.active < 38e9
    assert validate_rows([DEEPSEEK_V3])[0]["predicted_s"] > 0


@pytest.mark.parametrize("cells, reason", [
    ({"dense_layers": "3"}, "columns 'dense_layers' and 'dense_ffn' go together"),
    ({"moe_every": "2"}, "moe_every = 2: MoE blocks between dense ones"),
    ({"etp": "2", "tp": "4", "ep": "16", "dp": "4"}, "ep x etp = 16 x 2 must divide tp x cp x dp = 4 x 1 x 4"),
    ({"window": "128"}, "column 'window' is set but attention_variant is full"),
    ({"experts": "", "ep": "", "top_k": "8"}, "column 'top_k' is set on a dense row"),
    ({"attention_variant": "mla"}, "mla: give the key-value latent width in the 'kv_lora_rank' column and the rotated"),
    ({"kv_lora_rank": "512"}, "column 'kv_lora_rank' is set but attention_variant is full"),
    ({"attention_variant": "chunked"}, "attention_variant = chunked: the planner costs full causal, sliding-window"),
    ({"attention_variant": "sliding-window", "experts": "", "top_k": "", "ep": ""},
     "give the window (tokens) in the 'window' column"),
    ({"attention_variant": "sparse"}, "column 'attention_variant' = 'sparse': must be one of"),
    ({"router": "hash"}, "model.router = 'hash'"),
    ({"cuda_graphs": "yes"}, "column 'cuda_graphs' = 'yes': must be full, partial, none or blank"),
])
def test_what_an_moe_row_states_and_the_planner_does_not_cost_is_refused_by_name(cells, reason):
    out = validate_rows([{**QWEN3_30B, **cells}])[0]
    assert "predicted_s" not in out or out["predicted_s"] is None
    assert reason in out["error_message"]
    # zero or blank: the fact is absent, and the row is costed
    blank = {k: "0" if k == "dense_layers" else "" for k in cells if k not in ("experts", "tp", "ep", "top_k")}
    assert validate_rows([{**QWEN3_30B, **blank}])[0].get("predicted_s")


def test_a_sliding_window_row_is_costed_with_its_window():
    """GPT-OSS-style rows (attention_variant sliding-window, window 128 on every other block): the windowed blocks'
    attention visits the band only, so the step is shorter than the same row with full attention."""
    row = {**QWEN3_30B, "attention_variant": "sliding-window", "window": "128", "global_every": "2"}
    model = row_inputs(row)[0]
    assert (model.window, model.global_every, model.windowed_layers) == (128, 2, 24)
    windowed, full = validate_rows([row, QWEN3_30B])
    assert windowed["predicted_s"] < full["predicted_s"]
    assert windowed["breakdown_s"]["compute"] < full["breakdown_s"]["compute"]


def test_a_row_captured_whole_in_a_cuda_graph_has_no_moe_host_time(monkeypatch):
    from flopwise.plan import experts

    monkeypatch.setattr(experts, "MOE_BLOCK_HOST_S", 0.1)  # longer than any block's GPU time here
    graphed, plain, partial = validate_rows([{**QWEN3_30B, "cuda_graphs": "full"}, QWEN3_30B,
                                             {**QWEN3_30B, "cuda_graphs": "partial"}])
    host = plain["breakdown_s"]["host"] - graphed["breakdown_s"]["host"]
    # 48 MoE blocks, 1024 / 16 micro-batches: what each block's GPU time does not cover
    assert 0 < host < 48 * 64 * experts.MOE_BLOCK_HOST_S
    assert partial["predicted_s"] == plain["predicted_s"]  # parts of a step in graphs: the dispatcher still syncs
