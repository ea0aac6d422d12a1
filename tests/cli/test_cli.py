"""The command line: exit codes, one-line errors without tracebacks, JSON output."""

import json
import subprocess
import sys

import pytest

from flopwise.train.config import load_config
from flopwise.train.trainer import train


def run(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "flopwise.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_info_json_reports_params_and_flops():
    code, out, _ = run("info", "--preset", "yuan2-102b", "--json")
    data = json.loads(out)
    assert code == 0 and abs(data["params"] - 102.57e9) / 102.57e9 < 0.01 and data["flops_per_token"] > 6e11


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "--set", "train.lr=abc"], "train.lr = 'abc'"),
        (["train", "--set", "bogus.key=1"], "unknown config section"),
        (["train", "--config", "/nonexistent.toml"], "cannot read config file"),
        (["generate", "def ", "--checkpoint", "/nonexistent"], "does not exist"),
        (["train", "--set", 'data.shards="/nonexistent"', "--out", "/tmp/flopwise-cli-x"], "no token shards"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    code, out, err = run(*args)
    assert code == 2
    assert message in err and "Traceback" not in err + out
    assert err.strip().startswith("error:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--bogus"], "No such option: --bogus"),
        (["train", "--steps", "ten"], "Invalid value for '--steps'"),
        (["train", "--nproc", "3", "--tp", "2"], "--nproc 3 but the layout needs 2 processes"),
        (["plan", "--gpus", "many"], "Invalid value for '--gpus'"),
    ],
)
def test_usage_errors_are_click_messages_and_exit_2(args, message):
    code, out, err = run(*args)
    assert code == 2 and message in err and "Traceback" not in err + out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nproc", "3", "--tp", "3"], "tensor parallel degree 3 must divide heads (8) and kv_heads (4)"),
        (["--nproc", "2", "--pp", "2", "--pp-layers", "1,1"], "sums to 2 layers; the model has 4"),
        (["--nproc", "2", "--dp", "2", "--set", "train.global_batch=3"], "global batch 3 is not divisible"),
    ],
)
def test_an_impossible_layout_fails_before_torchrun_starts(args, message):
    code, out, err = run("train", *args)
    assert code == 2 and message in err and err.strip().startswith("error:")
    assert "torch.distributed" not in err + out and "ChildFailedError" not in err  # no process was started


def test_generate_from_a_trained_checkpoint_and_prompt_too_long(nano_shards, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(512)} | {"<|endoftext|>": 0}, unk_token="w1"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    shards = tmp_path / "shards"
    import shutil

    shutil.copytree(nano_shards, shards)
    tok.save(str(shards / "tokenizer.json"))
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["tokenizer"]["file"] = "tokenizer.json"
    (shards / "manifest.json").write_text(json.dumps(manifest))
    job = load_config(None, [f'data.shards="{shards}"', "train.global_batch=4", "train.micro_batch=4"],
                      preset="nano", out=str(tmp_path / "run"), **{"train.steps": 2})
    train(job)
    code, out, err = run("generate", "w5 w6", "--checkpoint", str(tmp_path / "run"), "-n", "5", "--seed", "0",
                         "--temperature", "0")
    assert code == 0, err
    assert out.startswith("w5 w6")
    code, out2, _ = run("generate", "w5 w6", "--checkpoint", str(tmp_path / "run"), "-n", "5", "--seed", "0",
                        "--temperature", "0")
    assert out2 == out  # greedy decoding is deterministic
    code, _, err = run("generate", " ".join(["w3"] * 70), "--checkpoint", str(tmp_path / "run"))
    assert code == 2 and "longer than the model context" in err


def _plan_output(env_columns: str | None) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if env_columns is not None:
        env["COLUMNS"] = env_columns
    proc = subprocess.run([sys.executable, "-m", "flopwise.cli", "plan", "--preset", "nano", "--gpu", "H100-SXM",
                           "--gpus", "8", "--global-batch", "64"], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_output_without_a_terminal_keeps_every_column_of_the_plan_table():
    out = _plan_output(None)  # a batch job or CI: no standard stream is a terminal
    header = next(line for line in out.splitlines() if "layout" in line and "MFU" in line)
    assert "peak GB" in header and "days" in header
    assert all(len(line) <= 100 for line in _plan_output("100").splitlines())  # COLUMNS still decides
