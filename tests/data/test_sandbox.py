"""Hostile code in the verification sandbox: each attack is contained and recorded; nothing else changes."""

import json
import os
import time

import pytest

from flopwise.data.sandbox import UID_BASE, SandboxLimits, network_namespace_available, run_sandboxed

LIMITS = SandboxLimits(timeout_s=2.0, cpu_s=1, memory_bytes=256 << 20, file_bytes=1 << 20, max_procs=8)


def sandbox_processes() -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/status") as fh:
                    status = fh.read()
            except OSError:
                continue
            state = status.split("\nState:", 1)[1].split()[0]
            if int(status.split("\nUid:", 1)[1].split()[0]) >= UID_BASE and state not in ("Z", "X"):
                pids.append(int(d))
    return pids


@pytest.fixture
def outside(tmp_path):
    """A directory outside the sandbox with a canary file; checked unchanged after each case."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "canary.txt").write_text("precious")
    before = sorted(os.listdir(d))
    yield d
    assert sorted(os.listdir(d)) == before
    assert (d / "canary.txt").read_text() == "precious"


def test_passing_and_failing_tests():
    assert (
        run_sandboxed("def f(x):\n    return x + 1\n", "assert f(1) == 2", limits=LIMITS).status == "passed"
    )
    r = run_sandboxed("def f(x):\n    return x\n", "def test_f():\n    assert f(1) == 2\n", limits=LIMITS)
    assert r.status == "failed" and "AssertionError" in r.detail
    unit = "import unittest\nclass T(unittest.TestCase):\n"
    unit += "    def test_a(self):\n        self.assertEqual(f(2), 3)\n"
    assert run_sandboxed("def f(x):\n    return x + 1\n", unit, limits=LIMITS).status == "passed"
    doc = 'def g(x):\n    """\n    >>> g(2)\n    4\n    """\n    return x * 2\n'
    assert run_sandboxed(doc, mode="doctest", limits=LIMITS).status == "passed"
    assert run_sandboxed(doc.replace("x * 2", "x * 3"), mode="doctest", limits=LIMITS).status == "failed"


def test_infinite_loop_and_sleep_time_out(outside):
    t = time.monotonic()
    assert run_sandboxed("while True:\n    pass\n", limits=LIMITS).status == "timeout"  # CPU limit
    assert run_sandboxed("import time\ntime.sleep(60)\n", limits=LIMITS).status == "timeout"  # wall clock
    assert time.monotonic() - t < 10


def test_fork_bomb_is_contained_and_reaped(outside):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    t = time.monotonic()
    r = run_sandboxed(code, limits=LIMITS)
    assert r.status in ("timeout", "resource_limit")
    assert time.monotonic() - t < 10
    time.sleep(0.2)
    assert sandbox_processes() == []  # every forked child was killed
    r = run_sandboxed("import os\nwhile True:\n    os.fork()\n", limits=LIMITS)
    assert r.status in ("resource_limit", "timeout")
    assert sandbox_processes() == []


def test_escape_with_setsid_is_still_killed():
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nos._exit(0)\n"
    run_sandboxed(code, limits=LIMITS)
    time.sleep(0.2)
    assert sandbox_processes() == []


def test_memory_bomb_hits_the_limit(outside):
    r = run_sandboxed("x = [bytearray(50 << 20) for _ in range(100)]\n", limits=LIMITS)
    assert r.status == "resource_limit" and "MemoryError" in r.detail


def test_file_size_limit():
    r = run_sandboxed("open('big', 'wb').write(b'x' * (8 << 20))\n", limits=LIMITS)
    assert r.status == "resource_limit"


@pytest.mark.parametrize(
    "attack",
    [
        "open({canary!r}, 'w').write('pwned')",
        "open({new!r}, 'w').write('pwned')",
        "import os\nos.remove({canary!r})",
        "import os\nfd = os.open({new!r}, os.O_CREAT | os.O_WRONLY)\nos.write(fd, b'x')",
        "import shutil\nshutil.rmtree({dir!r})",
        "import os\nos.rename({canary!r}, {new!r})",
    ],
)
def test_writes_and_deletes_outside_are_blocked(outside, attack):
    code = attack.format(canary=str(outside / "canary.txt"), new=str(outside / "new.txt"), dir=str(outside))
    r = run_sandboxed(code, limits=LIMITS)
    assert r.status == "sandbox_violation", r.detail


def test_writing_inside_its_own_directory_is_allowed():
    code = (
        "import os, tempfile\nopen('out.txt', 'w').write('ok')\n"
        "with tempfile.TemporaryFile() as f:\n    f.write(b'x')\n"
    )
    assert run_sandboxed(code, "assert open('out.txt').read() == 'ok'", limits=LIMITS).status == "passed"


def test_network_is_blocked():
    code = "import socket\ns = socket.create_connection(('93.184.216.34', 80), timeout=1)\n"
    assert run_sandboxed(code, limits=LIMITS).status == "sandbox_violation"
    code = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
    assert run_sandboxed(code, limits=LIMITS).status == "sandbox_violation"


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_network_namespace_is_available_here():
    assert network_namespace_available()


def test_signalling_the_parent_is_blocked():
    for code in (
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
        "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGTERM)\n",
        "import ctypes, os\nctypes.CDLL(None).kill(os.getppid(), 9)\n",
    ):
        r = run_sandboxed(code, limits=LIMITS)
        assert r.status == "sandbox_violation", r.detail
    assert os.getpid() > 0  # we are alive


def test_environment_secrets_are_not_inherited(monkeypatch):
    monkeypatch.setenv("FLOPWISE_TEST_SECRET", "hunter2")
    code = (
        "import os\nleak = 'hunter2' in repr(dict(os.environ))\n"
        "try:\n    leak = leak or 'hunter2' in open(f'/proc/{os.getppid()}/environ').read()\n"
        "except OSError:\n    pass\n"
        "assert not leak, 'secret leaked'\nassert set(os.environ) <= {'PATH', 'HOME', 'TMPDIR', 'LANG', "
        "'PYTHONDONTWRITEBYTECODE', 'LC_CTYPE'}, sorted(os.environ)\n"
    )
    r = run_sandboxed(code, limits=LIMITS)
    assert r.status == "passed", r.detail


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid drop only happens when running as root")
def test_runs_as_an_unprivileged_uid():
    r = run_sandboxed(
        "import os\nassert os.getuid() >= 100000 and os.getgid() >= 100000, os.getuid()\n", limits=LIMITS
    )
    assert r.status == "passed", r.detail


def test_crash_is_recorded():
    assert run_sandboxed("import os\nos.abort()\n", limits=LIMITS).status == "crashed"


def test_verify_stage_in_a_pipeline(tmp_path):
    from flopwise.data.config import PipelineConfig
    from flopwise.data.pipeline import run_pipeline

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary.txt").write_text("precious")
    ok = "def add(a, b):\n    return a + b\n"
    records = [
        {"name": "ok", "code": ok, "tests": "assert add(2, 3) == 5"},
        {
            "name": "ok2",
            "code": ok.replace("add", "plus"),
            "tests": "def test_plus():\n    assert plus(1, 1) == 2\n",
        },
        {"name": "wrong", "code": ok.replace("a + b", "a - b"), "tests": "assert add(2, 3) == 5"},
        {"name": "loop", "code": "def f():\n    while True:\n        pass\n", "tests": "f()"},
        {"name": "membomb", "code": "x = bytearray(1 << 34)\n", "tests": "pass"},
        {"name": "crash", "code": "import os\nos.abort()\n", "tests": "pass"},
        {
            "name": "vandal",
            "code": f"import os\nos.remove({str(outside / 'canary.txt')!r})\n",
            "tests": "pass",
        },
        {"name": "notests", "code": "x = 1\n"},
    ]
    (tmp_path / "code.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    cfg = PipelineConfig.from_dict(
        {
            "sources": [
                {
                    "type": "jsonl",
                    "path": "code.jsonl",
                    "text_field": "code",
                    "id_field": "name",
                    "fields": ["code", "tests"],
                }
            ],
            "stages": [
                {"type": "verify_code", "timeout_s": 2.0, "cpu_s": 1, "memory_mb": 256, "parallel": 4}
            ],
            "tokenizer": {"vocab_size": 300},
            "output": {"eval_fraction": 0.0, "write_dropped": True},
            "run": {"cache_dir": str(tmp_path / "cache"), "workers": 1},
        },
        base_dir=tmp_path,
    )
    result = run_pipeline(cfg)
    row = next(r for r in result.stages if r["stage"] == "verify_code")
    assert row["drops"] == {
        "verify_failed": 1,
        "verify_timeout": 1,
        "verify_resource_limit": 1,
        "verify_crashed": 1,
        "verify_sandbox_violation": 1,
    }
    assert row["docs_out"] == 3 and row["extra"]["passed"] == 2 and row["extra"]["not_applicable"] == 1
    reasons = {e["id"]: e["reason"] for e in row["extra"]["events"]}
    assert reasons == {
        "s0:wrong": "failed",
        "s0:loop": "timeout",
        "s0:membomb": "resource_limit",
        "s0:crash": "crashed",
        "s0:vandal": "sandbox_violation",
    }
    assert (outside / "canary.txt").read_text() == "precious"
    dropped = [json.loads(line) for line in (result.dropped_dir / "verify_code.jsonl").read_text().splitlines()]
    assert {d["id"]: d["reason"] for d in dropped} == {k: f"verify_{v}" for k, v in reasons.items()}
    wrong = next(d for d in dropped if d["id"] == "s0:wrong")
    assert "AssertionError" in wrong["detail"] and wrong["tests"] == "assert add(2, 3) == 5"
    from tokenizers import Tokenizer

    from flopwise.data.shards import TokenShards

    shards = TokenShards(result.shard_dir, "train")
    tok = Tokenizer.from_file(str(result.shard_dir / "tokenizer.json"))
    ids = list(shards.arrays[0])
    texts, cur = [], []
    for i in ids:
        if i == shards.eod_id:
            texts.append(tok.decode(cur))
            cur = []
        else:
            cur.append(int(i))
    assert sorted(texts) == sorted([ok, ok.replace("add", "plus"), "x = 1\n"])
