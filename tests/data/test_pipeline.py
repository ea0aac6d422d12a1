import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tokenizers
from tokenizers import Tokenizer

from flopwise.data.config import load_config
from flopwise.data.pipeline import cache_entries, run_pipeline
from flopwise.data.shards import TokenShards, read_manifest
from flopwise.errors import DataError

from .conftest import write_config

SRC = str(Path(__file__).resolve().parents[2] / "src")

PROSE_TOML = """
[[sources]]
type = "jsonl"
path = "corpus"
glob = "*.jsonl"
id_field = "id"
unit_bytes = {unit_bytes}

[[stages]]
type = "normalize"
[[stages]]
type = "gopher_quality"
min_words = 20
[[stages]]
type = "pii"
[[stages]]
type = "exact_dedup"
[[stages]]
type = "near_dedup"
threshold = 0.7

[tokenizer]
vocab_size = 400

[output]
eval_fraction = 0.1
dir = "out"

[run]
cache_dir = "cache"
"""


def documents(shard_dir, split):
    """The decoded documents of a split, in order."""
    shards = TokenShards(shard_dir, split)
    tok = Tokenizer.from_file(str(Path(shard_dir) / "tokenizer.json"))
    ids = np.concatenate(shards.arrays) if shards.arrays else np.zeros(0, np.int64)
    ends = np.flatnonzero(ids == shards.eod_id)
    out, start = [], 0
    for e in ends:
        out.append(tok.decode(ids[start:e].tolist()))
        start = e + 1
    assert start == ids.size  # every document ends with EOD
    return out


# PROSE_TOML on prose_corpus (unit_bytes 4096, 2 workers), computed on main at 2a45237 (tokenizers 0.23.3)
GOLDEN_DOCS = {"train": "893a281c61b88e83", "eval": "f4d04a08e539f5e2"}
GOLDEN_SHARDS, GOLDEN_TOKENIZERS = "496afd935b46d055", "0.23.3"


def digest(parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def test_end_to_end_exact_documents_and_cache(prose_corpus, tmp_path):
    src, docs = prose_corpus
    cfg = load_config(write_config(tmp_path / "p.toml", PROSE_TOML.format(unit_bytes=4096)))
    phases = []
    r = run_pipeline(cfg, workers=2, progress=lambda p, d, t: phases.append(p))
    assert not r.cached
    assert r.shard_dir == tmp_path / "out"
    got = documents(r.shard_dir, "train") + documents(r.shard_dir, "eval")
    # 120 unique documents survive: duplicates, the near duplicate, the short and the malformed line do not
    assert sorted(got) == sorted(docs)
    rows = {row["stage"]: row for row in r.stages}
    assert rows["read"]["docs_out"] == 124 and r.source_problems == {"malformed": 1}
    assert r.events[0]["kind"] == "malformed" and r.events[0]["file"].endswith("b.jsonl")
    assert rows["gopher_quality"]["drops"] == {"gopher_too_few_words": 1}
    assert (
        rows["exact_dedup"]["drops"] == {"exact_duplicate": 2}
        and rows["exact_dedup"]["extra"]["clusters"] == 2
    )
    assert rows["near_dedup"]["drops"] == {"near_duplicate": 1}
    assert rows["near_dedup"]["extra"]["examples"] == [{"kept": "s0:10", "removed": ["s0:near1"], "size": 2}]
    assert rows["tokenize"]["docs_out"] == 120 and rows["tokenize"]["tokens_out"] > 0
    m = read_manifest(r.shard_dir)
    assert m.tokenizer_file == "tokenizer.json" and m.eod_id == 0
    assert m.splits["train"].documents + m.splits["eval"].documents == 120
    assert 0 < m.splits["eval"].documents < 30
    assert m.extra["pipeline"]["config_hash"] and m.extra["pipeline"]["cache_key"] == r.key
    assert {"normalize, gopher_quality, pii", "exact_dedup", "near_dedup", "tokenize", "pack"} <= set(phases)
    # the same documents, splits and shards as before the pipeline became a package (computed on main)
    assert {s: digest(documents(r.shard_dir, s)) for s in ("train", "eval")} == GOLDEN_DOCS
    if tokenizers.__version__ == GOLDEN_TOKENIZERS:  # BPE training may differ in another version
        files = sorted(r.shard_dir.glob("*.bin")) + [r.shard_dir / "tokenizer.json"]
        assert digest([f.read_bytes() for f in files]) == GOLDEN_SHARDS

    t = time.monotonic()
    again = run_pipeline(cfg, workers=2)
    assert again.cached and again.key == r.key and time.monotonic() - t < 5
    assert sorted(documents(again.shard_dir, "train")) == sorted(documents(r.shard_dir, "train"))

    # same documents whatever the unit size and worker count; a config change is a new key
    cfg2 = load_config(write_config(tmp_path / "p2.toml", PROSE_TOML.format(unit_bytes=1 << 20)))
    cfg2.output.dir = "out2"
    r2 = run_pipeline(cfg2, workers=1)
    assert r2.key != r.key and not r2.cached
    assert sorted(documents(r2.shard_dir, "train") + documents(r2.shard_dir, "eval")) == sorted(docs)
    assert len(cache_entries(tmp_path / "cache")) == 2


def with_dropped(toml: str) -> str:
    return toml.replace("[output]\n", "[output]\nwrite_dropped = true\n", 1)


def test_write_dropped_gives_every_dropped_document_with_its_reason(prose_corpus, tmp_path):
    src, docs = prose_corpus
    cfg = load_config(write_config(tmp_path / "p.toml", with_dropped(PROSE_TOML.format(unit_bytes=4096))))
    r = run_pipeline(cfg, workers=2)
    assert r.dropped_dir == tmp_path / "out" / "dropped"
    files = {p.name: [json.loads(line) for line in p.read_text().splitlines()] for p in r.dropped_dir.iterdir()}
    short = {"id": "s0:short", "stage": "gopher_quality", "reason": "gopher_too_few_words", "text": "Too short."}
    near = docs[10].split()
    near[5] = "zebra"
    assert files == {
        "gopher_quality.jsonl": [short],
        "exact_dedup.jsonl": [
            {"id": "s0:dup1", "stage": "exact_dedup", "reason": "exact_duplicate", "duplicate_of": "s0:3",
             "text": docs[3]},
            {"id": "s0:dup2", "stage": "exact_dedup", "reason": "exact_duplicate", "duplicate_of": "s0:7",
             "text": docs[7]},
        ],
        "near_dedup.jsonl": [
            {"id": "s0:near1", "stage": "near_dedup", "reason": "near_duplicate", "duplicate_of": "s0:10",
             "text": " ".join(near)},
        ],
    }
    # nothing lost: every document read is either in the shards or dropped with a reason
    kept = documents(r.shard_dir, "train") + documents(r.shard_dir, "eval")
    assert len(kept) + sum(map(len, files.values())) == {row["stage"]: row for row in r.stages}["read"]["docs_out"]
    # the shards are those of the same pipeline without write_dropped
    plain = run_pipeline(load_config(write_config(tmp_path / "q.toml", PROSE_TOML.format(unit_bytes=4096))))
    assert plain.key != r.key and plain.dropped_dir is None
    for split in ("train", "eval"):
        assert documents(plain.shard_dir, split) == documents(r.shard_dir, split)
    assert not (plain.shard_dir / "dropped").exists()  # a run without the option removes stale files


def test_end_of_document_text_inside_a_document_does_not_split_it(tmp_path):
    texts = [f"document {i} says hello to the world of data" for i in range(6)]
    texts[2] = "print('<|endoftext|>')  # the end-of-document token's text, as code may hold it"
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    write_config(tmp_path / "t.toml", '[[sources]]\ntype = "jsonl"\npath = "c.jsonl"\n[tokenizer]\n'
                 'vocab_size = 300\n[output]\neval_fraction = 0.0\n[run]\ncache_dir = "cache"\n')
    r = run_pipeline(load_config(tmp_path / "t.toml"), workers=1)
    assert documents(r.shard_dir, "train") == texts
    assert read_manifest(r.shard_dir).splits["train"].documents == r.stages[-1]["docs_out"] == 6


def test_a_second_run_of_the_same_key_waits_for_the_first(prose_corpus, tmp_path):
    from flopwise.data.pipeline import cache_key, cache_remove
    from flopwise.data.pipeline.cache import is_locked, key_lock, lock_path
    from flopwise.data.sources import plan_units

    cfg = load_config(write_config(tmp_path / "p.toml", PROSE_TOML.format(unit_bytes=4096)))
    key, cache_dir = cache_key(cfg, plan_units(cfg)), tmp_path / "cache"
    assert run_pipeline(cfg, workers=1).key == key
    manifest = cache_dir / key / "shards" / "manifest.json"
    phases, out = [], {}

    def second_run():  # force: it will delete and rebuild the entry, once it holds the lock
        out["result"] = run_pipeline(cfg, workers=1, force=True, progress=lambda p, d, t: phases.append((p, d)))

    with key_lock(cache_dir, key):  # this test is "the first run"
        t = threading.Thread(target=second_run)
        t.start()
        deadline = time.monotonic() + 60
        while not phases and time.monotonic() < deadline:
            time.sleep(0.02)
        assert phases and phases[0] == (f"waiting for pid {os.getpid()}, preparing the same data", 0)
        time.sleep(0.2)
        assert len(phases) == 1 and manifest.is_file()  # nothing touched under someone else's lock
        assert is_locked(cache_dir, key)
        with pytest.raises(DataError, match="in use by a running pipeline"):
            cache_remove(cache_dir, [key[:8]])
    t.join(120)
    assert out["result"].key == key and not out["result"].cached and phases[1] == (phases[0][0], 1)
    assert not is_locked(cache_dir, key)
    assert cache_remove(cache_dir, [key[:8]]) == [key] and not lock_path(cache_dir, key).exists()


def test_a_killed_lock_holder_leaves_the_key_free(tmp_path):
    from flopwise.data.pipeline.cache import is_locked

    code = (
        "import sys, time; from pathlib import Path; from flopwise.data.pipeline.cache import key_lock\n"
        "with key_lock(Path(sys.argv[1]), 'k'):\n    print('held', flush=True); time.sleep(60)\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    try:
        assert p.stdout.readline().strip() == "held" and is_locked(tmp_path, "k")
    finally:
        p.kill()
        p.wait()
    assert not is_locked(tmp_path, "k")  # the kernel dropped the flock with the process


def cli(*args, cwd, timeout=300):
    return subprocess.run(
        [sys.executable, "-c", "from flopwise.cli import main; main()", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": SRC, "COLUMNS": "200"},
    )


def test_cli_run_json_and_cache_commands(prose_corpus, tmp_path):
    write_config(tmp_path / "p.toml", with_dropped(PROSE_TOML.format(unit_bytes=1 << 20)))
    r = cli("data", "run", "p.toml", "--workers", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "near_dedup" in r.stdout and "exact_duplicate" in r.stdout and "malformed" in r.stdout
    assert f"dropped documents: {tmp_path / 'out' / 'dropped'}" in r.stdout
    r = cli("data", "run", "p.toml", "--json", cwd=tmp_path)
    report = json.loads(r.stdout)
    assert report["cached"] is True and report["stages"][-1]["stage"] == "tokenize"
    r = cli("data", "run", "p.toml", cwd=tmp_path)
    assert "cache hit" in r.stdout
    r = cli("data", "cache", "ls", "--cache-dir", "cache", "--json", cwd=tmp_path)
    entries = json.loads(r.stdout)
    assert len(entries) == 1 and entries[0]["complete"] and entries[0]["key"] == report["key"]
    r = cli("data", "cache", "rm", "nosuchkey", "--cache-dir", "cache", cwd=tmp_path)
    assert r.returncode == 2 and "error:" in r.stderr
    r = cli("data", "cache", "rm", report["key"][:8], "--cache-dir", "cache", cwd=tmp_path)
    assert r.returncode == 0 and "removed 1" in r.stdout
    assert cache_entries(tmp_path / "cache") == []
    (tmp_path / "bad.toml").write_text('[[sources]]\ntype = "jsonl"\npath = "corpus"\n[run]\nworkers = -1\n')
    r = cli("data", "run", "bad.toml", cwd=tmp_path)
    assert r.returncode == 2 and "run.workers = -1" in r.stderr and "Traceback" not in r.stderr


RESUME_TOML = """
[[sources]]
type = "files"
path = "files"
glob = "*.txt"
files_per_unit = 2

[[stages]]
type = "normalize"
[[stages]]
type = "exact_dedup"
[[stages]]
type = "length"
min_chars = 10

[tokenizer]
vocab_size = 300

[output]
eval_fraction = 0.2
write_dropped = true

[run]
cache_dir = "cache"
"""


@pytest.mark.slow
def test_sigkill_midway_then_resume_gives_identical_output(tmp_path):
    import random

    from .conftest import prose

    rng = random.Random(5)
    (tmp_path / "files").mkdir()
    for i in range(240):
        text = prose(rng, 3) if i % 17 else "dup document text repeated here."
        (tmp_path / "files" / f"{i:04d}.txt").write_text(text)
    write_config(tmp_path / "r.toml", RESUME_TOML)
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    (ref_dir / "files").symlink_to(tmp_path / "files")
    write_config(
        ref_dir / "r.toml", RESUME_TOML.replace('cache_dir = "cache"', f'cache_dir = "{tmp_path}/refcache"')
    )

    # kill at several moments: during the map, and (second time) later
    for kills in range(2):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from flopwise.cli import main; main()",
                "data",
                "run",
                "r.toml",
                "-w",
                "1",
                "--json",
            ],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": SRC},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        target = 20 if kills == 0 else 100
        while time.monotonic() < deadline:
            markers = list((tmp_path / "cache").glob("*/work/*/*.done.json"))
            if len(markers) >= target or proc.poll() is not None:
                break
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not list((tmp_path / "cache").glob("*/shards/manifest.json")), (
            "killed too late: run had finished"
        )
        assert list((tmp_path / "cache").glob("*/work/*/*.done.json")), "killed too early: nothing to resume"
    resumed = run_pipeline(load_config(tmp_path / "r.toml"), workers=2)
    assert not resumed.cached
    reference = run_pipeline(load_config(ref_dir / "r.toml"), workers=1)
    for split in ("train", "eval"):
        a, b = documents(resumed.shard_dir, split), documents(reference.shard_dir, split)
        assert a == b and len(a) > 0
        ma, mb = read_manifest(resumed.shard_dir), read_manifest(reference.shard_dir)
        assert vars(ma.splits[split]) == vars(mb.splits[split])
        for f in ma.splits[split].files:
            assert (resumed.shard_dir / f).read_bytes() == (reference.shard_dir / f).read_bytes()
    # the dropped documents too: each exactly once, in the same order
    dropped = sorted(p.name for p in resumed.dropped_dir.iterdir())
    assert dropped == sorted(p.name for p in reference.dropped_dir.iterdir()) == ["exact_dedup.jsonl"]
    lines = (resumed.dropped_dir / "exact_dedup.jsonl").read_text().splitlines()
    assert lines == (reference.dropped_dir / "exact_dedup.jsonl").read_text().splitlines() and len(lines) == 14
    # no leftover temporary files anywhere
    assert not [p for p in (tmp_path / "cache").rglob("*.tmp")]


@pytest.mark.slow
def test_ray_runs_the_same_pipeline(prose_corpus, tmp_path):
    pytest.importorskip("ray")
    import ray

    src, docs = prose_corpus
    cfg = load_config(write_config(tmp_path / "p.toml", PROSE_TOML.format(unit_bytes=8192)))
    local = run_pipeline(cfg, workers=1)
    cfg.run.cache_dir = str(tmp_path / "raycache")
    cfg.output.dir = "rayout"
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": SRC}},
        )
        phases = []
        r = run_pipeline(cfg, ray_address="auto", progress=lambda p, d, t: phases.append((p, d, t)))
    finally:
        ray.shutdown()
    assert not r.cached and r.key == local.key
    for split in ("train", "eval"):
        assert documents(r.shard_dir, split) == documents(local.shard_dir, split)
    last = [(d, t) for p, d, t in phases if p == "tokenize"][-1]
    assert last[0] == last[1] > 1


@pytest.mark.slow
def test_stdlib_demo_preset(tmp_path):
    from flopwise.data.presets import stdlib_demo_config

    cfg = stdlib_demo_config(tmp_path / "demo", vocab_size=1024, cache_dir=tmp_path / "cache", dedup=False)
    r = run_pipeline(cfg, workers=2)
    m = read_manifest(r.shard_dir)
    assert r.shard_dir == tmp_path / "demo"
    assert (r.shard_dir / "tokenizer.json").is_file() and m.tokenizer_sha256
    assert m.vocab_size == 1024 and m.splits["eval"].documents > 0 and m.splits["train"].documents > 1000
    tok = Tokenizer.from_file(str(r.shard_dir / "tokenizer.json"))
    assert tok.token_to_id("<|endoftext|>") == m.eod_id
    rows = {row["stage"]: row for row in r.stages}
    assert rows["code_quality"]["drops"].get("code_auto_generated", 0) > 0
    from flopwise.data.loader import TokenLoader

    x, y = TokenLoader(TokenShards(r.shard_dir, "train"), seq_len=64, global_batch=4).next_batch()
    assert x.shape == (4, 64) and (x[:, 1:] == y[:, :-1]).all()
