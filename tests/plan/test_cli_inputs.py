"""The planner's commands on inputs a user gets wrong or pushes to the edge: a clear one-line error (exit 2) or a
consistent answer, never help text on a failed request, a traceback, Infinity in JSON or a half-made output folder."""

import json

import pytest

from flopwise.errors import ConfigError
from flopwise.hardware import get_accelerator, load_accelerator, training_precision, write_accelerator
from tests.cli_run import run_cli

SHAPE = ["--hidden", 4096, "--heads", 32, "--ffn", 11008, "--vocab", 32000, "--seq", 4096]


def test_a_bare_plan_prints_help_and_a_request_missing_its_model_says_what_is_missing(capsys):
    code, out, _ = run_cli(capsys, "plan")
    assert code == 0 and "Usage" in out
    code, out, err = run_cli(capsys, "plan", *SHAPE, "--gpus", 8, "--global-batch", 8, "--json")
    assert code == 2 and out == "" and "missing: --layers" in err
    code, out, err = run_cli(capsys, "plan", "--gpus", 2, "--global-batch", 4)
    assert code == 2 and "give --preset" in err and "Usage" not in out


@pytest.mark.parametrize("args, params, tokens, flops", [
    (["--flops", 1e24, "--tokens", 1e12], 1e24 / 6e12, 1e12, 1e24),  # the budget and its tokens fix the size
    (["--params", 7e9, "--flops", 1e24], 7e9, 1e24 / 4.2e10, 1e24),
    (["--params", 7e9, "--tokens", 1e12], 7e9, 1e12, 4.2e22),
])
def test_budget_takes_two_of_size_tokens_and_flops_and_derives_the_third(capsys, args, params, tokens, flops):
    code, out, _ = run_cli(capsys, "plan", "budget", *args, "--json")
    b = json.loads(out)
    assert code == 0
    assert (b["params"], b["tokens"], b["flops"]) == pytest.approx((params, tokens, flops))
    assert b["flops"] == pytest.approx(6 * b["params"] * b["tokens"])


@pytest.mark.parametrize("args, said", [
    (["--params", 7e9, "--tokens", 1e12, "--flops", 1e24], "at most two of"),
    (["--preset", "nano", "--tokens", 1e9, "--flops", 1e20], "at most two of"),
    (["--preset", "nano", "--params", 7e9], "not both"),
    (["--params", 1e300, "--tokens", 1e300, "--json"], "too large"),
])
def test_budget_refuses_conflicting_or_overflowing_inputs(capsys, args, said):
    code, out, err = run_cli(capsys, "plan", "budget", *args)
    assert code == 2 and said in err and "Infinity" not in out


def test_parts_without_bf16_plan_in_fp16(capsys):
    assert [training_precision(get_accelerator(n)) for n in ("V100-32GB", "P100", "T4", "A100-80GB")] == [
        "fp16", "fp16", "fp16", "bf16"]
    code, out, _ = run_cli(capsys, "plan", "--preset", "tiny", "--gpu", "V100-32GB", "--gpus", 8, "--global-batch",
                           8, "--json")
    assert code == 0 and json.loads(out)["training"]["precision"] == "fp16"
    code, _, err = run_cli(capsys, "plan", "--preset", "tiny", "--gpu", "V100-32GB", "--gpus", 8, "--global-batch",
                           8, "--precision", "fp8", "--software", "te")
    assert code == 2 and "use precision fp16" in err
    code, _, err = run_cli(capsys, "plan", "--preset", "tiny", "--gpu", "T4", "--gpus", 8, "--global-batch", 8,
                           "--precision", "bf16")
    assert code == 2 and "T4 has no bf16 tensor cores (they came with Ampere): use precision fp16" in err
    code, _, err = run_cli(capsys, "plan", "--preset", "tiny", "--gpu", "V100-32GB", "--gpus", 8, "--global-batch",
                           8, "--write-config", "job.toml")
    assert code == 2 and "bf16 or fp32" in err  # the trainer's precisions: no job written for a part without them


def test_an_accelerator_file_says_whether_its_part_has_bf16(tmp_path):
    v100 = get_accelerator("V100-32GB")
    path = write_accelerator(v100, tmp_path / "v100.toml")
    assert "bf16 = false" in path.read_text() and load_accelerator(path) == v100
    assert training_precision(load_accelerator(path)) == "fp16"
    a100 = write_accelerator(get_accelerator("A100-80GB"), tmp_path / "a100.toml")
    assert "bf16" not in a100.read_text() and training_precision(load_accelerator(a100)) == "bf16"
    bad = tmp_path / "bad.toml"
    bad.write_text(path.read_text().replace("bf16 = false", "bf16 = 0"))
    with pytest.raises(ConfigError, match="bf16 = 0 must be true or false"):
        load_accelerator(bad)


BASE = 'peak_tflops = 100\nmemory_gb = 80\nmemory_bandwidth_gbps = 2000\nlink_bandwidth_gbps = 300\n'


@pytest.mark.parametrize("body, said", [
    ('name = "X"\nnetwork_bandwidth_gbps = 0\n', "network_bandwidth_gbps = 0 must be a positive number"),
    ('name = ["a"]\n', "must be a non-empty string"),
    ('name = "  "\n', "must be a non-empty string"),
    ('name = "X"\n' + BASE.replace("100", "1e308"), "peak_tflops = 1e+308 must be a positive number"),
    ('name = "X"\nfp8_peak_tflops = 1e308\n', "fp8_peak_tflops = 1e+308 must be a non-negative number"),
])
def test_an_accelerator_file_that_would_break_the_planner_is_refused(tmp_path, body, said):
    path = tmp_path / "acc.toml"
    path.write_text(body if body.count("memory_gb") else BASE + body)  # the huge-peak case carries its own BASE
    with pytest.raises(ConfigError, match=said.replace("+", r"\+").replace("[", r"\[")):
        load_accelerator(path)


def test_validate_keeps_two_files_of_one_name_apart(tmp_path, capsys, published):
    one = next(iter(sorted(published.glob("*.csv"))))
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "runs.csv").write_text(one.read_text())
    code, out, _ = run_cli(capsys, "plan", "validate", tmp_path / "a" / "runs.csv", tmp_path / "b" / "runs.csv",
                           "--json")
    report = json.loads(out)
    assert code == 0 and sorted(report["files"]) == [str(tmp_path / f / "runs.csv") for f in ("a", "b")]
    assert {r["file"] for r in report["rows"]} == set(report["files"])


def test_validate_gives_a_row_too_large_to_cost_a_reason(tmp_path, capsys, published):
    one = next(iter(sorted(published.glob("*.csv"))))
    header, first, *_ = one.read_text().splitlines()
    cells = first.split(",")
    cells[header.split(",").index("layers")] = "1e300"
    (tmp_path / "big.csv").write_text("\n".join([header, first, ",".join(cells)]) + "\n")
    code, out, _ = run_cli(capsys, "plan", "validate", tmp_path / "big.csv", "--json")
    report = json.loads(out)
    assert code == 0 and "Infinity" not in out and "NaN" not in out
    assert "error_message" in report["rows"][1] and "predicted_s" in report["rows"][0]


def test_a_plan_that_fails_leaves_no_folder_for_its_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, _ = run_cli(capsys, "plan", "--preset", "yuan2-102b", "--gpus", 8, "--global-batch", 8,
                         "--write-config", "nd/sub/job.toml")
    assert code == 2 and not (tmp_path / "nd").exists()
    code, _, _ = run_cli(capsys, "plan", "--preset", "tiny", "--gpus", 8, "--global-batch", 8,
                         "--write-config", "nd/sub/job.toml")
    assert code == 0 and (tmp_path / "nd" / "sub" / "job.toml").is_file()


def test_a_huge_token_count_prints_in_e_notation(capsys):
    code, out, _ = run_cli(capsys, "plan", "--preset", "tiny", "--gpus", 8, "--global-batch", 8, "--tokens", 1e300,
                           "--top", 1)
    assert code == 0 and "e+288" in out and max(len(line) for line in out.splitlines()) < 250
