"""Robustness probe, inputs half: bad values, damaged, special and unreadable files, for data, plan, info,
train's options, generate and export.

Every refused case asserts exit status 2, exactly one `error:` line, no traceback, the message's subject, and
that nothing on disk was damaged. The CLI runs in-process (flopwise.cli.main) under a deadline, so a case
that would block (a FIFO, /proc/kmsg) fails instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
from pathlib import Path

import pytest

from flopwise.cli import main


class Blocked(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: int):
    """Interrupt a blocking call in this thread (SIGALRM) after `seconds`."""

    def fire(signum, frame):
        raise Blocked(f"still running after {seconds} s: blocked?")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run(argv, capsys, seconds: int = 120):
    code = 0
    with deadline(seconds):
        try:
            main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def refused(argv, capsys, *fragments: str) -> str:
    code, out, err = run(argv, capsys)
    assert "Traceback" not in out + err, err
    assert code == 2, f"exit {code}: {err or out}"
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def digest(folder: Path) -> dict[str, str]:
    """Every file under folder with its content hash: what 'nothing was damaged' compares."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def make(path: Path, kind: str) -> Path:
    """Put a damaged or special file of `kind` at path: directory, fifo, binary (not UTF-8) or missing."""
    if kind in ("directory", "empty-dir"):
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe\x00{not text\n")
    return path


# ------------------------------------------------------------------ values


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["plan", "budget", "--params", "nan"], ["--params = nan", "finite"]),
        (["plan", "budget", "--params", "inf"], ["--params = inf", "finite"]),
        (["plan", "budget", "--params", "-7e9"], ["--params = -7000000000.0", "> 0"]),
        (["plan", "budget", "--tokens", "-inf"], ["--tokens", "finite"]),
        (["plan", "budget", "--mfu", "0"], ["--mfu = 0.0", "(0, 1]"]),
        (["plan", "budget", "--mfu", "1.5"], ["--mfu = 1.5"]),
        (["plan", "budget", "--gpus", "0"], ["--gpus = 0", ">= 1"]),
        (["plan", "--preset", "nano", "--gpus", "2", "--global-batch", "8", "--layout", "mb=0"], ["layout mb = 0"]),
        (["plan", "--preset", "nano", "--gpus", "2", "--global-batch", "8", "--layout", "zero=7"], ["layout zero = 7"]),
        # (an end stage may hold no layer, only the embedding or the head: 2/0 plans; a negative count never does)
        (["plan", "--preset", "nano", "--gpus", "2", "--global-batch", "8", "--layout", "pp=2,split=3/-1"],
         ["layout split = '3/-1'", "must be >= 0"]),
        (["plan", "--preset", "nano", "--gpus", "2", "--global-batch", "8", "--layout", "tp=two"], ["layout tp"]),
        (["plan", "--preset", "nano", "--gpus", "0", "--global-batch", "8"], ["--gpus = 0"]),
        (["plan", "--preset", "nano", "--gpus", "2", "--global-batch", "-8"], ["--global-batch = -8"]),
        (["plan", "--preset", "nano", "--gpus", "2", "--global-batch", "8", "--tokens", "nan"], ["--tokens = nan"]),
        (["plan", "--preset", "nano", "--gpus", "2", "--global-batch", "8", "--inter-gbps", "inf"], ["--inter-gbps"]),
        (["plan", "--preset", "nano", "--gpus", "two"], ["--gpus"]),
        (["info", "--preset", "nope"], ["unknown preset 'nope'"]),
        (["train", "--nproc", "0"], ["--nproc = 0", ">= 1"]),
        (["train", "--nproc", "-1"], ["--nproc = -1"]),
        (["train", "--set", "train.lr=nan"], ["train.lr = nan", "finite"]),
        (["train", "--set", "train.lr=inf"], ["train.lr = inf"]),
        (["train", "--set", "guard.spike_factor=nan"], ["guard.spike_factor = nan"]),
        (["generate", "def ", "--checkpoint", "/nonexistent", "--temperature", "nan"], ["--temperature = nan"]),
        (["generate", "def ", "--checkpoint", "/nonexistent", "--max-tokens", "0"], ["--max-tokens = 0"]),
        (["generate", "def ", "--checkpoint", "/nonexistent", "--top-k", "-1"], ["--top-k = -1"]),
        (["generate", "def ", "--checkpoint", "/nonexistent", "--temperature", "1e308"], ["--temperature = 1e+308",
                                                                                       "[0, 100]"]),
        (["generate", "def ", "--checkpoint", "/nonexistent", "--seed", str(2**63)], ["--seed"]),
        (["train", "--seed", "-1"], ["train.seed = -1", "[0, 9223372036854775807]"]),
        (["train", "--seed", str(10**23)], ["train.seed = 1" + "0" * 23]),
        (["train", "--seed", str(10**400)], ["train.seed = 100000000000... (401 characters)"]),
        (["train", "--out", ""], ["out = ''", "give a directory"]),
        (["train", "--set", "guard.max_rollbacks=0"], ["guard.max_rollbacks = 0"]),
        (["export", "/nonexistent", "out.bin", "--format", "zip"], ["--format 'zip'"]),
        (["data", "cache", "rm"], ["give one or more keys"]),
    ],
)
def test_bad_values_are_one_line_and_exit_2(argv, fragments, capsys):
    refused(argv, capsys, *fragments)


PIPELINE = """
[[sources]]
type = "files"
path = "{path}"
glob = "*.txt"
{source_extra}
{stages}
[tokenizer]
vocab_size = 300
{tokenizer_extra}
[output]
dir = "{out}"
eval_fraction = 0.0

[run]
cache_dir = "cache"
workers = 1
"""


def pipeline(folder: Path, *, path="docs", out="out", stages="", source_extra="", tokenizer_extra="") -> Path:
    cfg = folder / "p.toml"
    cfg.write_text(PIPELINE.format(path=path, out=out, stages=stages, source_extra=source_extra,
                                   tokenizer_extra=tokenizer_extra))
    return cfg


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A folder with a small text corpus (docs/) and a pipeline config over it; run once, so later runs of
    the same config are cache hits."""
    root = tmp_path_factory.mktemp("inputs")
    docs = root / "docs"
    docs.mkdir()
    for i in range(6):
        words = " ".join(f"word{(i * 7 + j) % 23} token{j % 5}" for j in range(60))
        (docs / f"d{i}.txt").write_text(f"Document {i}. {words}.\n")
    pipeline(root)
    return root


@pytest.mark.parametrize(
    ("stage", "fragment"),
    [
        ('type = "verify_code"\nmemory_mb = -1', "memory_mb = -1"),
        ('type = "verify_code"\nmemory_mb = 0', "memory_mb = 0"),
        ('type = "verify_code"\ncpu_s = nan', "cpu_s = nan"),
        ('type = "verify_code"\nmax_procs = -1', "max_procs = -1"),
        ('type = "length"\nmin_chars = -5', "min_chars = -5"),
        ('type = "near_dedup"\nthreshold = inf', "threshold = inf"),
    ],
)
def test_stage_values_that_would_switch_a_limit_off_are_refused(stage, fragment, tmp_path, capsys):
    cfg = pipeline(tmp_path, stages=f"[[stages]]\n{stage}\n")
    refused(["data", "run", cfg], capsys, fragment)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ("[output]\neval_fraction = nan\n", "output.eval_fraction = nan"),
        ("[run]\nworkers = -1\n", "run.workers = -1"),
        ("[tokenizer]\nvocab_size = 0\n", "tokenizer.vocab_size"),
        ("[run]\n", "at least one [[sources]] table"),  # the brackets survive printing
    ],
)
def test_pipeline_config_values(toml, fragment, tmp_path, capsys):
    if "[[sources]]" not in fragment:
        toml = '[[sources]]\ntype = "files"\npath = "."\n' + toml
    (tmp_path / "p.toml").write_text(toml)
    refused(["data", "run", tmp_path / "p.toml"], capsys, fragment)


def test_workers_option(corpus, capsys):
    refused(["data", "run", corpus / "p.toml", "--workers", "-1"], capsys, "--workers = -1")


# ------------------------------------------------------------------ damaged, special and unreadable files


def special_files(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"preset = \"tiny\"\n\xff\xfe\x00garbage\n")
    empty_bad = tmp_path / "bad.toml"
    empty_bad.write_text("preset = \n")
    return {"fifo": fifo, "directory": folder, "binary": binary, "invalid": empty_bad}


EXPECTED = {"fifo": "FIFO", "directory": "directory", "binary": "not UTF-8", "invalid": "not valid TOML"}


@pytest.mark.parametrize("kind", list(EXPECTED))
@pytest.mark.parametrize(
    "command",
    [["train", "--config"], ["data", "run"], ["plan", "--preset", "nano", "--global-batch", "8", "--gpu"],
     ["cluster", "simulate", "{file}", "--cluster"]],
)
def test_config_files_damaged_or_special(command, kind, tmp_path, capsys):
    path = special_files(tmp_path)[kind]
    if command[0] == "cluster":  # a valid jobs file, the cluster file is the bad one
        jobs = tmp_path / "jobs.toml"
        jobs.write_text('[[jobs]]\nname = "a"\ngpus = 1\nduration_s = 10\n')
        argv = ["cluster", "simulate", jobs, "--cluster", path]
        if kind in ("fifo", "binary"):
            pytest.skip("the cluster spec reader is outside the inputs half (flopwise.cluster.spec)")
    else:
        argv = [*command, path]
    before = digest(tmp_path)
    refused(argv, capsys, EXPECTED[kind] if command[0] != "cluster" else "")
    assert digest(tmp_path) == before


def test_files_source_at_a_kernel_pseudo_file_is_refused_before_reading(tmp_path, capsys):
    cfg = pipeline(tmp_path, path="/proc/kmsg")
    refused(["data", "run", cfg], capsys, "/proc/kmsg", "pseudo file")


def test_jsonl_source_at_a_fifo_is_refused_before_reading(tmp_path, capsys):
    os.mkfifo(tmp_path / "feed.jsonl")
    (tmp_path / "p.toml").write_text('[[sources]]\ntype = "jsonl"\npath = "feed.jsonl"\n[run]\ncache_dir = "c"\n')
    refused(["data", "run", tmp_path / "p.toml"], capsys, "feed.jsonl", "FIFO")


def test_a_fifo_among_the_input_files_is_counted_not_read(corpus, tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    for p in (corpus / "docs").iterdir():
        (docs / p.name).write_bytes(p.read_bytes())
    os.mkfifo(docs / "zz-pipe.txt")
    cfg = pipeline(tmp_path)
    code, out, err = run(["data", "run", cfg, "--json"], capsys)
    assert code == 0, err
    assert '"not_a_regular_file": 1' in out


@pytest.mark.parametrize("kind", ["directory", "fifo", "binary", "missing"])
def test_tokenizer_path_damaged_or_special(kind, corpus, tmp_path, capsys):
    target = make(tmp_path / "tok.json", kind)
    cfg = pipeline(tmp_path, path=str(corpus / "docs"), tokenizer_extra=f'path = "{target}"')
    refused(["data", "run", cfg], capsys, "tokenizer.path")


def test_empty_input_is_reported_as_no_input_documents(tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"e{i}.txt").write_text("   \n" if i else "")
    refused(["data", "run", pipeline(tmp_path)], capsys, "no input documents")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_config(tmp_path, capsys):
    cfg = pipeline(tmp_path)
    cfg.chmod(0)
    refused(["data", "run", cfg], capsys, "permission denied")


# ------------------------------------------------------------------ plan validate


CSV_HEADER = "model,layers,hidden,heads,ffn,vocab,seq,gpus,global_batch,micro_batch,tp,pp,measured_step_s\n"
CSV_ROW = "gpt-1.7b,24,2304,24,9216,51200,2048,32,512,1,1,1,{measured}\n"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (CSV_HEADER.encode() + b"\xff\xfe,24\n", "not UTF-8"),
        ((CSV_HEADER + CSV_ROW.format(measured="fast")).encode(), "no row could be predicted"),
        ((CSV_HEADER + CSV_ROW.format(measured="nan")).encode(), "no row could be predicted"),
        ((CSV_HEADER + CSV_ROW.format(measured="1.2").replace(",24,2304", ",x,2304")).encode(), "no row could"),
        (b"model,layers\n", "no rows"),
        (b"a,b\n1,2\n", "missing column"),
    ],
)
def test_plan_validate_damaged_csv(content, fragment, tmp_path, capsys):
    path = tmp_path / "runs.csv"
    path.write_bytes(content)
    refused(["plan", "validate", path], capsys, fragment)
    refused(["plan", "validate", path, "--json"], capsys, fragment)


@pytest.mark.parametrize("kind", ["directory", "fifo", "missing"])
def test_plan_validate_special_csv(kind, tmp_path, capsys):
    path = make(tmp_path / "runs.csv", kind)
    refused(["plan", "validate", path], capsys, {"directory": "directory", "fifo": "FIFO", "missing": "no such"}[kind])


def test_plan_validate_predicts_a_good_row(tmp_path, capsys):
    path = tmp_path / "runs.csv"
    path.write_text(CSV_HEADER + CSV_ROW.format(measured="1.2"))
    code, out, err = run(["plan", "validate", path], capsys)
    assert code == 0 and "runs.csv: 1 row, median |error|" in out, err


# ------------------------------------------------------------------ data output and cache


def published(corpus: Path, capsys) -> None:
    code, out, err = run(["data", "run", corpus / "p.toml"], capsys)
    assert code == 0, err


def test_output_dir_keeps_the_users_files_and_refuses_to_overwrite_them(corpus, tmp_path, capsys):
    published(corpus, capsys)  # the first run (then cache hits)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "mydata-00001.bin").write_bytes(b"my own data")
    (mine / "notes.txt").write_text("keep")
    cfg = pipeline(tmp_path, path=str(corpus / "docs"), out=str(mine))
    (tmp_path / "cache").symlink_to(corpus / "cache")
    code, out, err = run(["data", "run", cfg], capsys)
    assert code == 0, err
    assert (mine / "mydata-00001.bin").read_bytes() == b"my own data" and (mine / "notes.txt").read_text() == "keep"
    assert (mine / "manifest.json").is_file()
    # a second publish replaces its own files, still not the user's
    code, out, err = run(["data", "run", cfg], capsys)
    assert code == 0 and (mine / "mydata-00001.bin").read_bytes() == b"my own data"
    # a file of the user's with a name the pipeline writes: refused, untouched
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "train-00000.bin").write_bytes(b"precious")
    cfg.write_text(cfg.read_text().replace(str(mine), str(theirs)))
    before = digest(theirs)
    refused(["data", "run", cfg], capsys, "did not write", "train-00000.bin")
    assert digest(theirs) == before
    # a manifest.json that is not ours: refused, untouched
    (theirs / "train-00000.bin").unlink()
    (theirs / "manifest.json").write_text('{"mine": true}')
    before = digest(theirs)
    refused(["data", "run", cfg], capsys, "manifest.json")
    assert digest(theirs) == before


def test_editing_a_published_shard_cannot_corrupt_the_cache(corpus, capsys):
    published(corpus, capsys)
    entry = next(p for p in (corpus / "cache").iterdir() if p.is_dir())
    cached = digest(entry / "shards")
    shard = corpus / "out" / "train-00000.bin"
    assert os.stat(shard).st_ino != os.stat(entry / "shards" / "train-00000.bin").st_ino
    with open(shard, "r+b") as fh:  # in place, as a careless user or tool would
        fh.write(b"\xff\xff\xff\xff")
    assert digest(entry / "shards") == cached
    published(corpus, capsys)  # a cache hit publishes the intact shard again
    assert (corpus / "out" / "train-00000.bin").read_bytes() == (entry / "shards" / "train-00000.bin").read_bytes()


def test_a_damaged_cache_entry_is_repacked_not_reused(corpus, capsys):
    published(corpus, capsys)
    entry = next(p for p in (corpus / "cache").iterdir() if p.is_dir())
    good = digest(entry / "shards")
    with open(entry / "shards" / "train-00000.bin", "r+b") as fh:
        fh.seek(2)
        fh.write(b"\x00\x01\x02")
    code, out, err = run(["data", "run", corpus / "p.toml", "--json"], capsys)
    assert code == 0 and '"cached": false' in out, err
    assert digest(entry / "shards") == good
    (entry / "shards" / "train-00000.bin").write_bytes(b"")  # truncated
    published(corpus, capsys)
    assert digest(entry / "shards") == good


def test_cache_rm_refuses_an_ambiguous_prefix(tmp_path, capsys):
    cache = tmp_path / "cache"
    for key in ("abc111", "abc222", "def333"):
        (cache / key).mkdir(parents=True)
        (cache / key / "key.json").write_text("{}")
    before = digest(cache)
    err = refused(["data", "cache", "rm", "abc", "--cache-dir", cache], capsys, "matches 2 entries")
    assert "abc111" in err and "abc222" in err and digest(cache) == before
    refused(["data", "cache", "rm", "zzz", "--cache-dir", cache], capsys, "no cache entry 'zzz'")
    code, out, err = run(["data", "cache", "rm", "abc", "--all-matching", "--cache-dir", cache], capsys)
    assert code == 0 and "removed 2" in out
    assert sorted(p.name for p in cache.iterdir()) == ["def333"]


# ------------------------------------------------------------------ help and messages


def test_every_option_has_help_and_flags_show_no_value(capsys):
    import typer.main

    from flopwise.cli import app

    missing = []

    def walk(cmd, path):
        for param in cmd.params:
            if getattr(param, "param_type_name", "") == "option" and not getattr(param, "help", None):
                missing.append(f"{path} {max(param.opts, key=len)}")
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "flopwise")
    assert not [m for m in missing if "--help" not in m], missing
    code, out, _ = run(["train", "--help"], capsys)
    assert code == 0 and "--resume" in out and "<bool>" not in out
    code, out, _ = run(["plan", "--help"], capsys)
    assert code == 0 and "<bool>" not in out


def test_error_text_is_printed_as_written(tmp_path, capsys):
    (tmp_path / "p.toml").write_text("[output]\neval_fraction = 2.0\n")
    refused(["data", "run", tmp_path / "p.toml"], capsys, "[[sources]] table is required")
    (tmp_path / "p.toml").write_text('[[sources]]\ntype = "files"\npath = "."\n[output]\neval_fraction = 2.0\n')
    refused(["data", "run", tmp_path / "p.toml"], capsys, "must be in [0, 1)")


@pytest.mark.parametrize(("kind", "fragment"), [("empty-dir", "no such file"), ("fifo", "FIFO"),
                                                ("binary", "no plan_vs_measured record"), ("missing", "no such")])
def test_plan_calibrate_damaged_or_special_runs(kind, fragment, tmp_path, capsys):
    run_dir = make(tmp_path / "run", kind)
    refused(["plan", "calibrate", run_dir], capsys, fragment)


@pytest.mark.parametrize(("where", "fragment"), [("a-file", "not a directory"), ("/proc/flopwise-out", "cannot create"),
                                                 ("foreign", "did not write")])
def test_bad_output_dir_fails_before_any_work(where, fragment, corpus, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "eval-00000.bin").write_bytes(b"mine")
    out = where if where.startswith("/") else str(tmp_path / where)
    cfg = pipeline(tmp_path, path=str(corpus / "docs"), out=out)
    before = digest(tmp_path)
    refused(["data", "run", cfg], capsys, fragment)
    assert digest(tmp_path) == before and not (tmp_path / "cache").exists()
