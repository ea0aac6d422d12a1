"""Runs, checkpoints, shards, output paths and signals, tried the way a careless user (or a full disk, or a
kill) would. Each case asserts the exit status, the single message (one `error:` line, no traceback) and
that nothing on disk was damaged. Most cases run the CLI in this process on a copy of one small trained run.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flopwise.cli.common import console, err_console
from flopwise.flops import param_counts
from flopwise.train import trainer as trainer_mod
from flopwise.train.checkpoint import checkpoint_problems, step_dirs
from flopwise.train.config import load_config, parse_value
from flopwise.train.launch import torchrun_command
from flopwise.train.run_lock import LOCK_FILE, RunLockedError, run_lock
from tests.cli_run import run_cli

SETS = ["train.global_batch=8", "train.micro_batch=4", "train.log_every=1", "checkpoint.every=1",
        "train.eval_every=0"]


def _sets(shards) -> list[str]:
    return sum((["--set", s] for s in [f'data.shards="{shards}"', *SETS]), [])


def _train_args(shards, out, steps: int, *extra: str) -> list[str]:
    return ["train", "--preset", "nano", "--steps", str(steps), "--out", str(out), "--quiet", *_sets(shards), *extra]


@pytest.fixture(scope="session")
def trained_run(nano_shards, tmp_path_factory):
    """One nano run of 2 steps with a checkpoint at each step (step_00000001, step_00000002)."""
    out = tmp_path_factory.mktemp("robust") / "run"
    trainer_mod.train(load_config(None, [f'data.shards="{nano_shards}"', *SETS, "train.steps=2"], preset="nano",
                                  out=str(out)))
    return out


@pytest.fixture
def run_copy(trained_run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(trained_run, dest)
    return dest


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """No wrapping: a message is matched as the user would read it."""
    monkeypatch.setattr(console, "width", 400)
    monkeypatch.setattr(err_console, "width", 400)


cli = run_cli


def one_error(code: int, err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def no_model_loads(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a model was built before the output location was checked")

    import flopwise.serve.loader as loader
    import flopwise.train.engine as engine

    monkeypatch.setattr(trainer_mod, "build_engine", refuse)
    monkeypatch.setattr(engine, "build_model", refuse)
    monkeypatch.setattr(loader, "build_model", refuse)


# -- the run directory's lock -------------------------------------------------------------------------------

def test_a_second_run_on_the_same_out_refuses_naming_the_holder(run_copy, nano_shards, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom flopwise.train.run_lock import run_lock\n"
         "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n", str(run_copy)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(run_copy)
        for extra in (["--resume"], []):
            code, _, err = cli(capsys, *_train_args(nano_shards, run_copy, 4, *extra))
            one_error(code, err, "in use by another run", f"pid {holder.pid} on {socket.gethostname()}")
        assert snapshot(run_copy) == before
    finally:
        holder.kill()
        holder.wait()


def _stale_lock(directory: Path) -> int:
    """A lock file left by a run that died (SIGKILL): its pid is gone."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    (directory / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    return dead.pid


def test_a_lock_held_on_another_host_is_refused(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "some-other-host"}))
    with pytest.raises(RunLockedError, match="another machine"), run_lock(tmp_path):
        pass
    pid = _stale_lock(tmp_path)
    with run_lock(tmp_path) as warning:
        assert warning == f"took over the lock of pid {pid} on {socket.gethostname()}, which is no longer running"


# -- output locations are checked before any model loads ------------------------------------------------------

def test_bad_output_locations_fail_first(run_copy, nano_shards, tmp_path, capsys, monkeypatch):
    no_model_loads(monkeypatch)
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    cases = [
        (_train_args(nano_shards, a_file, 2), "is a file, not a directory"),
        (_train_args(nano_shards, "/proc/flopwise-x", 2), "cannot create the directory"),
        (_train_args(nano_shards, tmp_path / "new", 2, "--metrics", tmp_path), "is a directory"),
        (["export", run_copy, tmp_path], "is a directory"),
        (["export", run_copy, "/proc/flopwise-x/m.safetensors"], "cannot create the directory"),
        (["export", run_copy, a_file, "--format", "hf"], "is not a model export"),
        (["generate", "x", "--checkpoint", run_copy, "--device", "bogus"], "device 'bogus'"),
    ]
    for args, needle in cases:
        code, _, err = cli(capsys, *args)
        one_error(code, err, needle)
    assert a_file.read_text() == "mine" and not (tmp_path / "new" / "metrics.jsonl").exists()


def test_a_run_the_layout_or_context_refuses_is_refused_before_the_data_is_prepared(trained_run, nano_shards, tmp_path,
                                                                                   capsys, monkeypatch):
    def prepared(*a, **k):
        raise AssertionError("the data was prepared before the refusal")

    monkeypatch.setattr(trainer_mod, "resolve_shards", prepared)
    for extra, needle in ((["--set", "train.micro_batch=5"], "not divisible by micro_batch 5"),
                          (["--set", "train.seq_len=1000"], "train.seq_len = 1000: exceeds the model context")):
        code, _, err = cli(capsys, *_train_args(nano_shards, tmp_path / "new", 2, *extra))
        one_error(code, err, needle)
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    code, _, err = cli(capsys, *_train_args(nano_shards, run, 4, "--resume", "--set", "model.hidden=96",
                                            "--set", "model.heads=4"))
    one_error(code, err, "holds another model")


def test_a_refused_run_leaves_no_empty_folder_but_keeps_one_it_found(nano_shards, tmp_path, capsys):
    for extra, needle in ((["--split", "5,5"], "split 5,5 gives 2 stages"),
                          (["--set", "train.micro_batch=5"], "not divisible by micro_batch 5")):
        code, _, err = cli(capsys, *_train_args(nano_shards, tmp_path / "new", 2, *extra))
        one_error(code, err, needle)
        assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    code, _, err = cli(capsys, *_train_args(nano_shards, tmp_path / "mine", 2, "--split", "5,5"))
    one_error(code, err, "split 5,5")
    assert (tmp_path / "mine").is_dir()


def test_the_launcher_passes_paths_with_quotes_to_the_ranks_intact():
    odd = '/tmp/we"ird \\ dir\x7f/shards'
    cmd = torchrun_command(2, ["train", "--nproc", "2", "--out", "x"], odd)
    assert "--nproc" not in cmd
    value = cmd[cmd.index("--set", cmd.index("flopwise.cli")) + 1]
    assert value.startswith("data.shards=") and parse_value(value.split("=", 1)[1]) == odd


# -- damaged checkpoints and metrics ----------------------------------------------------------------------------

DAMAGE = {
    "truncated rng_rank0.pt": ("rng_rank0.pt", lambda b: b[:100], "rng_rank0.pt has 100 bytes"),
    "empty trainer.json": ("trainer.json", lambda b: b"", "trainer.json"),
    "wrong trainer.json": ("trainer.json", lambda b: b"[1, 2]", "trainer.json"),
    "config without model": ("config.json", lambda b: b"{}", "config.json"),
    "config a list": ("config.json", lambda b: b"[1, 2]", "config.json"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_resume_falls_back_to_the_newest_intact_checkpoint(case, run_copy, nano_shards, capsys):
    name, damage, reason = DAMAGE[case]
    newest = step_dirs(run_copy)[-1]
    (newest / name).write_bytes(damage((newest / name).read_bytes()))
    with open(run_copy / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 2, "lo')  # a torn last line, as a full disk or a kill leaves
    dead = _stale_lock(run_copy)  # and the killed run's lock
    code, out, err = cli(capsys, *_train_args(nano_shards, run_copy, 2, "--resume"))
    assert code == 0, err
    text = out + err
    assert f"warning: {run_copy}: took over the lock of pid {dead}" in err and err.count("took over") == 1
    assert not (run_copy / LOCK_FILE).exists()  # released at the end
    assert f"checkpoint {newest} is damaged" in text and reason in text
    assert "resuming from" in text and "step_00000001 (step 1)" in text
    assert "dropped 1 torn" in text and "Traceback" not in text
    records = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert not checkpoint_problems(step_dirs(run_copy)[-1])  # the damaged step 2 was written again, whole


def test_export_reads_the_newest_intact_checkpoint_and_refuses_a_damaged_step(run_copy, tmp_path, capsys, caplog):
    newest = step_dirs(run_copy)[-1]
    data = next(p for p in newest.iterdir() if p.suffix == ".distcp")
    data.write_bytes(data.read_bytes()[:1000])
    code, _, err = cli(capsys, "export", run_copy, tmp_path / "m.safetensors")
    assert code == 0 and (tmp_path / "m.safetensors").is_file(), err
    assert f"checkpoint {newest} is damaged ({data.name} has 1000 bytes" in caplog.text
    assert "reading step_00000001" in caplog.text
    code, _, err = cli(capsys, "export", newest, tmp_path / "n.safetensors")
    one_error(code, err, f"checkpoint {newest} is damaged: {data.name} has 1000 bytes")
    code, _, err = cli(capsys, "export", data, tmp_path / "n.safetensors")
    one_error(code, err, "is a file: give a run directory or a step directory")


def test_no_intact_checkpoint_is_one_line_naming_each(run_copy, nano_shards, capsys):
    for d in step_dirs(run_copy):
        (d / "trainer.json").write_text("")
    before = snapshot(run_copy)
    code, _, err = cli(capsys, *_train_args(nano_shards, run_copy, 3, "--resume"))
    one_error(code, err, "no intact checkpoint", "step_00000001: trainer.json", "step_00000002: trainer.json")
    assert {k: v for k, v in snapshot(run_copy).items() if k != "metrics.jsonl"} == \
        {k: v for k, v in before.items() if k != "metrics.jsonl"}


def test_resume_with_another_model_shape_says_so(run_copy, nano_shards, capsys):
    before = snapshot(run_copy)
    args = _train_args(nano_shards, run_copy, 3, "--resume")
    args[args.index("nano")] = "nano-llama"
    code, _, err = cli(capsys, *args)
    one_error(code, err, "holds another model", "lfa True -> False")
    assert snapshot(run_copy) == before


def test_a_full_disk_during_save_keeps_the_previous_checkpoint(run_copy, nano_shards, capsys, monkeypatch):
    import torch

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", no_space)
    previous = step_dirs(run_copy)[-1]
    code, _, err = cli(capsys, *_train_args(nano_shards, run_copy, 3, "--resume"))
    one_error(code, err, "cannot write checkpoint step 3", "No space left on device", f"{previous} is intact")
    assert step_dirs(run_copy)[-1] == previous and not checkpoint_problems(previous)
    assert not list((run_copy / "checkpoints").glob(".step_*"))  # the partial directory is gone


@pytest.mark.slow
def test_a_full_tmpfs_during_save_keeps_the_previous_checkpoint(nano_shards, tmp_path):
    """A real full disk: a 2.5 MB tmpfs (one nano checkpoint is ~1.9 MB), mounted in a user namespace."""
    if not shutil.which("unshare") or subprocess.run(
            ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {tmp_path}"],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs unshare and user namespaces)")
    out, keep = tmp_path / "disk", tmp_path / "after"
    out.mkdir()
    train = " ".join(f"'{a}'" for a in [sys.executable, "-m", "flopwise.cli",
                                         *_train_args(nano_shards, out / "run", 4)])
    script = textwrap.dedent(f"""\
        mount -t tmpfs -o size=2500k tmpfs '{out}' || exit 99
        {train} 2> '{tmp_path}/err'; echo $? > '{tmp_path}/rc'
        cp -r '{out}/run' '{keep}'
        """)
    subprocess.run(["unshare", "-rm", "sh", "-c", script], timeout=600, check=True)
    err = (tmp_path / "err").read_text()
    one_error(int((tmp_path / "rc").read_text()), err, "No space left on device", "is intact")
    dirs = step_dirs(keep)
    assert dirs and not checkpoint_problems(dirs[-1])
    assert not list((keep / "checkpoints").glob(".step_*"))


# -- damaged shards ---------------------------------------------------------------------------------------------

SHARD_DAMAGE = {
    "odd size, manifest without sizes": (lambda b: b[:-1], [], "not a whole number"),
    "truncated": (lambda b: b[:-64], [], "the manifest says"),
    "ids out of range": (lambda b: b"\xff" * len(b), [], "outside the vocabulary"),
    "flipped, --verify-data": (lambda b: b[:10] + bytes([b[10] ^ 1]) + b[11:], ["--verify-data"], "sha256"),
}


@pytest.mark.parametrize("case", list(SHARD_DAMAGE))
def test_damaged_shards_are_one_error_naming_the_file(case, nano_shards, tmp_path, capsys):
    damage, extra, needle = SHARD_DAMAGE[case]
    shards = tmp_path / "shards"
    shutil.copytree(nano_shards, shards)
    victim = sorted(shards.glob("train-*.bin"))[0]
    victim.write_bytes(damage(victim.read_bytes()))
    if "without sizes" in case:  # a manifest written before sizes and hashes were recorded
        manifest = json.loads((shards / "manifest.json").read_text())
        for split in manifest["splits"].values():
            split.pop("bytes"), split.pop("sha256")
        (shards / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = cli(capsys, *_train_args(shards, tmp_path / "run", 1, *extra))
    one_error(code, err, str(victim), needle)


# -- signals ----------------------------------------------------------------------------------------------------

def _popen(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "flopwise.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kw)


def _wait_for_steps(metrics: Path, proc, steps: int = 2, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count("\n") >= steps:
            return
        time.sleep(0.2)
    raise AssertionError(f"no progress: {proc.poll()} {proc.stderr.read() if proc.poll() is not None else ''}")


@pytest.mark.slow
def test_ctrl_c_stops_training_and_names_the_last_checkpoint(nano_shards, tmp_path):
    """SIGINT to one process (SIGTERM, exit 143, goes the same way: see the launcher's test)."""
    sig, out = signal.SIGINT, tmp_path / "run"
    proc = _popen(_train_args(nano_shards, out, 100_000))
    _wait_for_steps(out / "metrics.jsonl", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {sig.name}" in err and "the last checkpoint is" in err and "Traceback" not in err
    assert not checkpoint_problems(step_dirs(out)[-1]) and not (out / LOCK_FILE).exists()


def _launched_by(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"FLOPWISE_LAUNCHER_PID={pid}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
@pytest.mark.distributed
def test_the_launcher_stops_every_rank_and_reports_rank_errors_once(nano_shards, tmp_path):
    out = tmp_path / "run"
    ranks = ["--nproc", "2", "--tp", "2", "--set", "parallel.timeout_s=60"]
    shards = tmp_path / "shards"  # a damaged shard: both ranks find it, the launcher says it once
    shutil.copytree(nano_shards, shards)
    victim = sorted(shards.glob("train-*.bin"))[0]
    victim.write_bytes(victim.read_bytes()[:-64])
    damaged = _popen([*_train_args(shards, tmp_path / "run2", 2), *ranks])  # runs beside the first job
    try:
        proc = _popen([*_train_args(nano_shards, out, 100_000), *ranks], start_new_session=True)  # `kill <pid>`
        _wait_for_steps(out / "metrics.jsonl", proc)
        children = _launched_by(proc.pid)
        assert len(children) >= 3  # torchrun's agent and two ranks
        proc.send_signal(signal.SIGTERM)
        stdout, err = proc.communicate(timeout=180)
        assert proc.returncode == 143, err
        assert "stopped by SIGTERM: torchrun and every rank ended" in err and "Traceback" not in err
        whole = param_counts(load_config(None, [], preset="nano").model_config()).total
        assert f"{whole / 1e6:.2f}M parameters, layout tp2" in stdout  # the whole model, not rank 0's half
        mfu = [r["mfu"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "mfu" in r]
        assert mfu and max(mfu) <= 1.0  # one peak for all ranks (the best any measured)
        time.sleep(0.5)
        assert not [p for p in children if Path(f"/proc/{p}").exists() and
                    b"zombie" not in Path(f"/proc/{p}/status").read_bytes().lower()]

        _, err = damaged.communicate(timeout=300)
    finally:
        if damaged.poll() is None:
            damaged.kill()
            damaged.wait()
    one_error(damaged.returncode, err, str(victim), "the manifest says")
