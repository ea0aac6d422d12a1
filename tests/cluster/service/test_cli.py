"""`flopwise cluster submit | ls | show | logs | cancel | queue | nodes | usage` against a live service."""

from __future__ import annotations

import json
import re
import sys

import pytest

from flopwise.cli import main
from tests.cluster.service.conftest import A, Api


def run(capsys, *args) -> str:
    capsys.readouterr()
    try:
        main(list(args))
    except SystemExit as exc:
        assert exc.code in (0, None), capsys.readouterr()
    return capsys.readouterr().out


def test_cli_submit_watch_cancel(service, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FLOPWISE_CLUSTER_URL", service.url)
    monkeypatch.setenv("FLOPWISE_CLUSTER_TOKEN", A)
    job = tmp_path / "hello.toml"
    job.write_text(f'id = "hello"\nkind = "command"\nargv = ["{sys.executable}", "-c", "print(6 * 7)"]\n')
    assert run(capsys, "cluster", "submit", str(job)).strip() == "hello"
    assert json.loads(run(capsys, "cluster", "submit", str(job), "--json"))["created"] is False
    Api(service.url, A).wait("hello", "succeeded")
    assert "42" in run(capsys, "cluster", "logs", "hello", "--follow")
    assert json.loads(run(capsys, "cluster", "logs", "hello", "--json"))["text"].splitlines().count("42") == 1
    rows = json.loads(run(capsys, "cluster", "ls", "--json"))
    assert [(r["id"], r["state"]) for r in rows] == [("hello", "succeeded")]
    shown = run(capsys, "cluster", "show", "hello")
    assert "succeeded" in shown and "transitions" in shown
    shown = json.loads(run(capsys, "cluster", "show", "hello", "--json"))
    assert [t["to_state"] for t in shown["transitions"]][-1] == "succeeded"
    sleeper = tmp_path / "sleeper.toml"
    sleeper.write_text(f'kind = "command"\ngpus = 2\nargv = ["{sys.executable}", "-c", "import time; time.sleep(60)"]\n')
    first = run(capsys, "cluster", "submit", str(sleeper)).strip()
    second = run(capsys, "cluster", "submit", str(sleeper)).strip()
    Api(service.url, A).wait(first, "running")
    queue = json.loads(run(capsys, "cluster", "queue", "--json"))
    assert [(q["id"], q["position"]) for q in queue] == [(second, 1)]
    assert re.search(r"(59\.\d|60\.0) min", run(capsys, "cluster", "queue"))  # the running job's default 1 h
    assert json.loads(run(capsys, "cluster", "nodes", "--json"))[0]["jobs"] == [first]
    assert "allocated" in run(capsys, "cluster", "usage")
    assert "cancelling" in run(capsys, "cluster", "cancel", first)
    Api(service.url, A).wait(first, "cancelled")
    run(capsys, "cluster", "cancel", second)


def test_cli_errors_are_one_line(service, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FLOPWISE_CLUSTER_URL", service.url)
    monkeypatch.setenv("FLOPWISE_CLUSTER_TOKEN", "wrong-token")
    job = tmp_path / "bad.toml"
    job.write_text('kind = "command"\n')
    with pytest.raises(SystemExit) as exc:
        main(["cluster", "ls"])
    assert exc.value.code == 2 and "401" in capsys.readouterr().err
    monkeypatch.setenv("FLOPWISE_CLUSTER_TOKEN", A)
    with pytest.raises(SystemExit) as exc:
        main(["cluster", "submit", str(job)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "argv" in err and "Traceback" not in err
    monkeypatch.setenv("FLOPWISE_CLUSTER_URL", "http://127.0.0.1:9")
    with pytest.raises(SystemExit) as exc:
        main(["cluster", "ls"])
    assert exc.value.code == 2 and "cannot reach" in capsys.readouterr().err
