import json

import pytest

from flopwise.plan import experts
from flopwise.plan.cost import BREAKDOWN_KEYS
from tests.cli_run import run_cli


def run(argv, capsys):
    return run_cli(capsys, *argv)


def test_plan_search_table_and_breakdown(capsys):
    code, out, _ = run(
        ["plan", "--preset", "yuan2-2b", "--gpus", "64", "--global-batch", "384", "--top", "3"], capsys
    )
    assert code == 0
    assert "tok/s/GPU" in out and "bubble" in out and "optimizer" in out and "memory per rank" in out


def test_plan_json(capsys):
    code, out, _ = run(
        [
            "plan",
            "--preset",
            "yuan2-2b",
            "--gpus",
            "16",
            "--global-batch",
            "384",
            "--tokens",
            "1e11",
            "--json",
        ],
        capsys,
    )
    assert code == 0
    data = json.loads(out)
    assert {"model", "cluster", "training", "evaluated", "feasible", "plans"} <= set(data)
    plan = data["plans"][0]
    assert {
        "layout",
        "step_time_s",
        "breakdown_percent",
        "tokens_per_s_per_gpu",
        "mfu",
        "memory_per_stage_gb",
        "days",
        "gpu_hours",
        "fits",
    } <= set(plan)
    assert set(plan["breakdown_percent"]) == set(BREAKDOWN_KEYS)
    assert plan["days"] > 0 and plan["fits"]


def test_plan_layout_option(capsys):
    code, out, _ = run(
        [
            "plan",
            "--preset",
            "yuan2-102b",
            "--gpus",
            "1024",
            "--global-batch",
            "1152",
            "--layout",
            "tp=8,pp=16,rc=full,sp=1,zero=1,mb=1",
            "--json",
        ],
        capsys,
    )
    assert code == 0
    lay = json.loads(out)["plans"][0]["layout"]
    assert (lay["tp"], lay["pp"], lay["dp"], lay["recompute"], lay["zero"]) == (8, 16, 8, "full", 1)


def test_plan_errors_exit_2_with_an_explanation(capsys):
    code, _, err = run(
        ["plan", "--preset", "yuan2-2b", "--gpus", "64", "--global-batch", "384", "--layout", "pp=32"], capsys
    )
    assert code == 2 and "error:" in err and "closest feasible alternative" in err
    code, _, err = run(["plan", "--preset", "yuan2-2b", "--global-batch", "8", "--layout", "bogus=1"], capsys)
    assert code == 2 and "bogus" in err
    code, _, err = run(["plan", "--preset", "nope", "--global-batch", "8"], capsys)
    assert code == 2 and "unknown preset" in err


def test_output_files_are_checked_first_and_a_cpu_plan_is_fp32_by_default(tmp_path, capsys, monkeypatch):
    code, _, err = run(["plan", "--preset", "nano", "--gpu", "cpu", "--gpus", "1", "--global-batch", "8",
                        "--write-config", str(tmp_path)], capsys)
    assert code == 2 and "--write-config" in err and "is a directory" in err and "Traceback" not in err
    # the trainer's train.dtype = "auto": fp32 on a CPU, bf16 autocast on a GPU; the plan follows unless told
    for gpu, precision in (("cpu", "fp32"), ("A100-80GB", "bf16")):
        code, out, err = run(["plan", "--preset", "nano", "--gpu", gpu, "--gpus", "1", "--global-batch", "8",
                              "--json"], capsys)
        assert code == 0, err
        assert json.loads(out)["training"]["precision"] == precision
    # a file the command cannot read or write, wherever it happens: one line, exit 2
    import flopwise.cli.plan as plan_cli

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "runs/x/metrics.jsonl")

    monkeypatch.setattr(plan_cli, "calibrate_runs", denied)
    code, _, err = run(["plan", "calibrate", "runs/x"], capsys)
    assert code == 2 and err.strip() == "error: runs/x/metrics.jsonl: Permission denied"
    # a broken connection is no bad input: it keeps its traceback
    from flopwise.cli import main

    def broken(*args, **kwargs):
        raise ConnectionResetError(104, "Connection reset by peer", "127.0.0.1:29500")

    monkeypatch.setattr(plan_cli, "calibrate_runs", broken)
    with pytest.raises(ConnectionResetError):
        main(["plan", "calibrate", "runs/x"])


def test_budget(capsys):
    code, out, _ = run(
        ["plan", "budget", "--params", "7e9", "--tokens", "1e12", "--gpus", "1024", "--mfu", "0.5", "--json"],
        capsys,
    )
    assert code == 0
    data = json.loads(out)
    assert data["flops"] == pytest.approx(4.2e22) and data["pf_days"] == pytest.approx(4.2e22 / 8.64e19)
    code, out, _ = run(["plan", "budget", "--preset", "yuan2-102b"], capsys)
    assert code == 0 and "PF-days" in out


def test_validate_json_and_table(capsys, published):
    path = str(published / "korthikanti_2022.csv")
    code, out, _ = run(["plan", "validate", path, "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert {"median_abs_error", "max_abs_error"} <= set(data["summary"])
    assert data["summary"]["median_abs_error"] <= 0.10 and len(data["rows"]) == 9
    assert sum(s["rows"] for s in data["sources"].values()) == 9  # the summary per source
    for row in data["rows"]:
        assert sum(row["breakdown_s"].values()) == pytest.approx(row["predicted_s"])
    code, out, _ = run(["plan", "validate", path], capsys)
    assert code == 0 and "median |error|" in out and "source Korthikanti" in out
    assert "memory GiB" not in out and "peak memory on" not in out  # no row printed a peak: no memory column


def test_validate_sets_a_printed_peak_memory_beside_the_planned_one(capsys, tmp_path):
    path = tmp_path / "runs.csv"
    head = "model,layers,hidden,heads,kv_heads,ffn,mlp,vocab,seq,gpu,gpus,tp,pp,zero,global_batch,micro_batch,"
    shape = "8b,32,4096,32,8,14336,swiglu,128256,8192,H100-SXM,8,1,1,3,8,1,1.5"
    path.write_text(head + "measured_step_s,measured_memory_gib,memory_measure\n"
                    f"{shape},40,reserved\n{shape},,\n{shape},40 GiB,\n")
    code, out, _ = run(["plan", "validate", str(path), "--json"], capsys)
    data = json.loads(out)
    rows = data["rows"]
    assert code == 0 and rows[0]["memory_measure"] == "reserved" and "memory_error" not in rows[1]
    assert "not a number" in rows[2]["memory_message"] and "error" in rows[2]  # the step still predicted
    assert data["summary"]["memory_rows"] == 1 and data["summary"]["predicted"] == 3
    code, out, _ = run(["plan", "validate", str(path)], capsys)
    planned, error = rows[0]["planned_memory_gib"], rows[0]["memory_error"]
    flat = out.replace("\n", " ").replace("│", " ")
    assert code == 0 and "memory GiB: planned / printed (error)" in out
    assert f"{planned:.1f} / 40.0 reserved ({100 * error:+.0f}%)" in " ".join(flat.split())
    assert f"peak memory on 1 row that printed it: median |error| {100 * abs(error):.1f}%" in out


def test_validate_missing_file_exits_2(capsys, tmp_path):
    code, _, err = run(["plan", "validate", str(tmp_path / "none.csv")], capsys)
    assert code == 2 and "cannot read" in err


@pytest.mark.parametrize(
    "argv", [["plan", "--help"], ["plan", "budget", "--help"], ["plan", "validate", "--help"], ["plan"]]
)
def test_help(capsys, argv):
    code, out, _ = run(argv, capsys)
    assert code == 0 and "Usage" in out


ODD_ROWS = """model,layers,hidden,heads,kv_heads,ffn,mlp,vocab,seq,gpu,gpus,global_batch,measured_step_s,tp,\
experts,top_k,precision,recompute
dense,4,256,4,4,1024,gelu,512,128,A100-80GB,8,64,0.01,,,,,
unknown gpu,4,256,4,4,1024,gelu,512,128,Z9000-XL,8,64,0.01,,,,,
this cpu,4,256,4,4,1024,gelu,512,128,CPU,8,64,0.01,,,,,
moe,4,256,4,4,512,swiglu,512,128,H100,8,64,0.01,,8,2,,
moe without experts,4,256,4,4,512,swiglu,512,128,H100,8,64,0.01,,,,,
negative width,4,-5,4,4,1024,gelu,512,128,A100,8,64,0.01,,,,,
nan measured,4,256,4,4,1024,gelu,512,128,A100,8,64,nan,,,,,
text heads,4,256,abc,4,1024,gelu,512,128,A100,8,64,0.01,,,,,
tp beyond a node,4,256,4,4,1024,gelu,512,128,A100,8,64,0.01,64,,,,
bad recompute,4,256,4,4,1024,gelu,512,128,A100,8,64,0.01,,,,,sometimes
fp8 on A100,4,256,4,4,1024,gelu,512,128,A100,8,64,0.01,,,,fp8,
mxfp8 on H100,4,256,4,4,1024,gelu,512,128,H100,8,64,0.01,,,,MXFP8,
mxfp8 on B200,4,256,4,4,1024,gelu,512,128,B200,8,64,0.01,,,,MXFP8,
truncated
"""


def test_validate_odd_rows_each_get_a_prediction_or_a_reason(capsys, tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text(ODD_ROWS)
    code, out, err = run(["plan", "validate", str(path), "--json"], capsys)
    assert code == 0 and "Traceback" not in err
    rows = {r["model"]: r for r in json.loads(out)["rows"]}
    assert rows["dense"]["predicted_s"] > 0 and rows["moe"]["predicted_s"] > 0
    assert rows["mxfp8 on B200"]["predicted_s"] > 0  # read as mxfp8, not as fp8 (whose name it contains)
    # the experts columns are read: 8 experts of top-2 cost more than the same shape without experts
    assert rows["moe"]["predicted_s"] > rows["moe without experts"]["predicted_s"]
    reasons = {
        "unknown gpu": "unknown accelerator 'Z9000-XL'",
        "this cpu": "gpu = 'cpu': a row names the accelerator it ran on",
        "negative width": "'hidden' = -5",
        "nan measured": "finite",
        "text heads": "'heads' = 'abc'",
        "tp beyond a node": "tp = 64 exceeds",
        "bad recompute": "recompute = 'sometimes'",
        "fp8 on A100": "no FP8 tensor cores",
        "mxfp8 on H100": "no block-scaled (MXFP8) tensor cores",
        "truncated": "is blank",
    }
    for model, reason in reasons.items():
        assert reason in rows[model]["error_message"], rows[model]
    code, _, err = run(["plan", "validate", str(path)], capsys)  # the table too
    assert code == 0 and "Traceback" not in err


def test_validate_missing_columns_exit_2_with_their_names(capsys, tmp_path):
    path = tmp_path / "cols.csv"
    path.write_text("model,layers,hidden\nx,4,256\n")
    code, _, err = run(["plan", "validate", str(path)], capsys)
    assert code == 2 and "missing column(s)" in err and "measured_step_s" in err


def test_plan_says_when_its_step_has_few_micro_batches(capsys):
    """One micro-batch per data-parallel rank: the plan prints how published runs with so few were predicted."""
    argv = ["plan", "--preset", "nano", "--gpu", "H100-SXM", "--gpus", "8", "--software", "deepspeed",
            "--global-batch", "8", "--layout", "tp=1,pp=1,mb=1", "--top", "1"]
    code, _, err = run(argv, capsys)
    assert code == 0 and "note: few micro-batches: this plan runs 1 per step" in err
    code, _, err = run([*argv[:-5], "64", *argv[-4:]], capsys)  # 8 micro-batches per step: no such note
    assert code == 0 and "few micro-batches" not in err
    code, out, _ = run([*argv, "--json"], capsys)  # the plan's notes travel with it in the JSON
    assert code == 0 and json.loads(out)["plans"][0]["notes"][0].startswith("few micro-batches: this plan runs 1")


def test_plan_takes_mxfp8_on_blackwell_only_and_never_writes_it_as_a_job(capsys, tmp_path):
    base = ["plan", "--preset", "nano", "--gpus", "8", "--software", "te", "--global-batch", "64", "--top", "1"]
    code, out, _ = run(base + ["--gpu", "B200", "--precision", "mxfp8", "--json"], capsys)
    assert code == 0 and json.loads(out)["plans"][0]["step_time_s"] > 0
    code, _, err = run(base + ["--gpu", "H100-SXM", "--precision", "mxfp8"], capsys)
    assert code != 0 and "no block-scaled (MXFP8) tensor cores" in err and "Traceback" not in err
    code, _, err = run(["plan", "--preset", "nano", "--gpus", "8", "--global-batch", "64", "--gpu", "B200",
                        "--precision", "mxfp8", "--write-config", str(tmp_path / "job.toml")], capsys)
    assert code != 0 and "--write-config writes a job for flopwise's trainer" in err
    assert not (tmp_path / "job.toml").exists()


def test_plan_takes_nvfp4_on_blackwell_only_says_what_it_assumes_and_never_writes_it_as_a_job(capsys, tmp_path):
    base = ["plan", "--preset", "nano", "--gpus", "8", "--software", "te", "--global-batch", "64", "--top", "1"]
    code, out, _ = run(base + ["--gpu", "B200", "--precision", "nvfp4", "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and result["plans"][0]["step_time_s"] > 0
    assert any(n.startswith("nvfp4: the FP4 GEMMs are taken to reach FP8's fraction") for n in result["notes"])
    code, out, _ = run(base + ["--gpu", "B200", "--precision", "fp8", "--json"], capsys)
    assert code == 0 and not any(n.startswith("nvfp4") for n in json.loads(out)["notes"])
    for gpu in ("H100-SXM", "A100-80GB"):
        code, _, err = run(base + ["--gpu", gpu, "--precision", "nvfp4"], capsys)
        assert code != 0 and "no FP4 tensor cores, only Blackwell's and CDNA 4's have (B200, GB200" in err
        assert "use precision fp8\n" in err.replace(" \n", "\n") + "\n" and "Traceback" not in err  # no mxfp8 here
    code, _, err = run(["plan", "--preset", "nano", "--gpus", "8", "--global-batch", "64", "--gpu", "B200",
                        "--precision", "nvfp4", "--write-config", str(tmp_path / "job.toml")], capsys)
    assert code != 0 and "--write-config writes a job for flopwise's trainer" in err
    assert not (tmp_path / "job.toml").exists()


def test_plan_fp8_all_gather_reaches_the_plan_and_is_refused_where_it_cannot_apply(capsys):
    base = ["plan", "--preset", "llama-1b", "--gpu", "H100-SXM", "--gpus", "8", "--global-batch", "16",
            "--software", "torch-compile", "--layout", "zero=3,mb=2", "--top", "1", "--json"]
    code, out, _ = run(base + ["--precision", "fp8"], capsys)
    assert code == 0
    plain = json.loads(out)
    code, out, _ = run(base + ["--precision", "fp8", "--fp8-all-gather"], capsys)
    assert code == 0
    gathered = json.loads(out)
    assert gathered["training"]["fp8_all_gather"] is True and plain["training"]["fp8_all_gather"] is False
    assert gathered["plans"][0]["step_time_s"] < plain["plans"][0]["step_time_s"]
    code, _, err = run(base + ["--fp8-all-gather"], capsys)  # bf16
    assert code != 0 and "needs precision = fp8" in err and "Traceback" not in err
    code, _, err = run(base[:-5] + ["--layout", "zero=0,dp=8", "--precision", "fp8", "--fp8-all-gather"], capsys)
    assert code != 0 and "shards none" in err and "Traceback" not in err


def test_plan_host_time_per_step_defaults_to_the_profile_and_takes_a_measured_value(capsys):
    base = ["plan", "--preset", "llama-1b", "--gpu", "H100-SXM", "--gpus", "8", "--global-batch", "16",
            "--software", "te", "--layout", "tp=1,pp=1,mb=2", "--top", "1", "--json"]
    code, out, _ = run(base, capsys)
    assert code == 0
    default = json.loads(out)
    assert default["training"]["host_s"] == pytest.approx(0.05)
    assert default["plans"][0]["breakdown_s"]["host"] == pytest.approx(0.05)
    code, out, _ = run(base + ["--host-ms", "0"], capsys)  # e.g. full-iteration CUDA graphs
    assert code == 0
    graphed = json.loads(out)["plans"][0]
    assert graphed["breakdown_s"]["host"] == 0
    step = default["plans"][0]["step_time_s"]
    assert step - graphed["step_time_s"] == pytest.approx(0.05, rel=0.05)  # the straggler term scales it a little
    for bad in ("-5", "nan"):
        code, _, err = run(base + ["--host-ms", bad], capsys)
        assert code == 2 and "--host-ms" in err


def test_cuda_graphs_take_an_moe_blocks_host_time_away(capsys):
    """--cuda-graphs: a step captured whole has no host time per MoE block (experts.MOE_BLOCK_HOST_S)."""
    argv = ["plan", "--preset", "qwen3-30b-a3b", "--gpu", "B200", "--gpus", "8", "--global-batch", "64",
            "--software", "te", "--layout", "tp=1,pp=1,ep=8,micro_batch=1", "--top", "1", "--json"]
    plain = json.loads(run(argv, capsys)[1])
    graphed = json.loads(run([*argv, "--cuda-graphs"], capsys)[1])
    assert graphed["training"]["cuda_graphs"] and not plain["training"]["cuda_graphs"]
    host = plain["plans"][0]["breakdown_s"]["host"] - graphed["plans"][0]["breakdown_s"]["host"]
    assert host == pytest.approx(48 * plain["plans"][0]["microbatches"] * experts.MOE_BLOCK_HOST_S)


def test_an_overlapped_all_to_all_shortens_the_exposed_ep_time(capsys):
    """--a2a-overlap: each MoE block's all-to-all hides behind its own compute (CostModel.moe_terms); stated in the
    JSON; the rest of the step as before."""
    argv = ["plan", "--preset", "qwen3-30b-a3b", "--gpu", "H100-SXM", "--gpus", "16", "--global-batch", "64",
            "--software", "te", "--layout", "tp=1,pp=1,ep=16,micro_batch=1", "--top", "1", "--json"]
    plain = json.loads(run(argv, capsys)[1])
    overlapped = json.loads(run([*argv, "--a2a-overlap"], capsys)[1])
    assert overlapped["training"]["a2a_overlap"] and not plain["training"]["a2a_overlap"]
    before, after = plain["plans"][0]["breakdown_s"], overlapped["plans"][0]["breakdown_s"]
    assert 0 <= after["ep"] < before["ep"] and after["compute"] == pytest.approx(before["compute"])


def test_a_node_once_dispatcher_shortens_an_all_to_all_over_nodes(capsys):
    """--dispatcher hybridep: EP 16 over two nodes sends a token once per other node (plan/experts.py); stated in the
    JSON; compute as before; a dispatcher the planner does not know is refused by name."""
    argv = ["plan", "--preset", "qwen3-30b-a3b", "--gpu", "H100-SXM", "--gpus", "16", "--global-batch", "64",
            "--software", "te", "--layout", "tp=1,pp=1,ep=16,micro_batch=1", "--top", "1", "--json"]
    plain = json.loads(run(argv, capsys)[1])
    hybrid = json.loads(run([*argv, "--dispatcher", "hybridep"], capsys)[1])
    assert plain["training"]["dispatcher"] == "alltoall" and hybrid["training"]["dispatcher"] == "hybridep"
    before, after = plain["plans"][0]["breakdown_s"], hybrid["plans"][0]["breakdown_s"]
    assert 0 < after["ep"] < before["ep"] / 3 and after["compute"] == pytest.approx(before["compute"])
    code, _, err = run([*argv, "--dispatcher", "flex"], capsys)
    assert code != 0 and "dispatcher = 'flex': must be one of alltoall, deepep, hybridep" in err
