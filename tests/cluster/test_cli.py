"""`flopwise cluster simulate`: JSON keys, tables, figures, and bad input as one line with exit status 2."""

from __future__ import annotations

import json

import pytest

from tests.cli_run import run_cli

JOBS = """
[[jobs]]
name = "a"
duration_s = 600
gpus = 4
submit_time = 0
[[jobs]]
name = "b"
duration_s = 300
gpus = "1..8"
submit_time = 30
[[jobs]]
name = "huge"
duration_s = 10
gpus = 64
"""

CLUSTER = """
[[nodes]]
count = 2
gpus = 4
accelerator = "A100-80GB"
[[queues]]
name = "small"
quota = { "A100-80GB" = 2 }
"""


run = run_cli


def test_json_has_the_documented_keys_and_records_rejections(tmp_path, capsys):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(JOBS)
    code, out, err = run(capsys, "cluster", "simulate", str(jobs), "--nodes", "2", "--gpus-per-node", "4",
                         "--policy", "goodput", "--json", "--per-job", "--plot", str(tmp_path / "f.png"))
    assert code == 0, err
    data = json.loads(out)
    for key in ("avg_jct_s", "p99_jct_s", "makespan_s", "utilisation", "jobs"):
        assert key in data
    assert data["jobs"] == 3 and data["finished"] == 2 and data["rejected"] == 1
    assert data["rejections"][0] == {"job": "huge", "reason": "64 GPUs > 8 gpu GPUs in the cluster"}
    assert {j["name"] for j in data["per_job"]} == {"a", "b", "huge"}
    assert (tmp_path / "f.png").stat().st_size > 10_000


def test_an_unwritable_plot_is_refused_before_the_replay(tmp_path, capsys):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(JOBS)
    code, out, err = run(capsys, "cluster", "simulate", str(jobs), "--nodes", "2", "--gpus-per-node", "4",
                         "--plot", str(tmp_path))
    assert code == 2 and "--plot" in err and "is a directory" in err and "Traceback" not in err
    assert "avg" not in out.lower()  # nothing was replayed


def test_table_output_and_a_quota_that_can_never_admit(tmp_path, capsys):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(JOBS.replace("[[jobs]]", '[[jobs]]\nqueue = "small"'))
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(CLUSTER)
    code, out, err = run(capsys, "cluster", "simulate", str(jobs), "--cluster", str(cluster))
    assert code == 0, err
    assert "average JCT" in out and "rejected a: queue small can hold at most 2 A100-80GB GPUs, the job needs 4" in out


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, [], "cannot read"),
        ("", ["--format", "philly"], "empty file"),
        ("a,b,c\n1,2,3\n", ["--format", "philly"], "missing column(s) timestamp, duration, num_gpus, cluster"),
        ("a,b,c\n1,2,3\n", [], "cannot tell its format"),
        ("timestamp,duration,num_gpus,gpu_time,cluster\n2017-10-01 00:00:00,x,1,1,vc\n", [], "no usable job rows"),
        ('[[jobs]]\nname = "a"\ngpus = "8..2"\n', [], "gpus = '8..2': expected min..max"),
        ('[[jobs]]\nname = "a"\nbogus = 1\n', [], "unknown key(s) bogus"),
        ('[[jobs]]\nname = "a"\ngpus = 4\n', ["--policy", "nope"], "--policy 'nope'"),
        ('[[jobs]]\nname = "a"\ngpus = 4\n', ["--nodes", "0"], "--nodes 0"),
        ('[[jobs]]\nname = "a"\ngpus = 4\n', ["--interval", "0"], "interval = 0.0"),
        ('[[jobs]]\nname = "a"\ngpus = 4\n', ["--cluster", "/nonexistent.toml"], "cannot read cluster file"),
        ('[[jobs]]\nname = "a"\ngpus = 4\n', ["--gpu", "B900"], "unknown accelerator 'B900'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, content, args, message):
    path = tmp_path / ("w.toml" if content and content.startswith("[[") else "w.csv")
    if content is not None:
        path.write_text(content)
    code, out, err = run(capsys, "cluster", "simulate", str(path), *args)
    assert code == 2, (out, err)
    assert message in err and "Traceback" not in err + out
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) <= 2  # rich may wrap one line


def test_philly_rows_that_are_malformed_are_skipped_and_listed(tmp_path, capsys):
    trace = tmp_path / "philly.csv"
    trace.write_text(
        "timestamp,duration,num_gpus,gpu_time,cluster\n"
        "2017-10-01 00:00:00,100,1,100,vc1\n"
        "2017-10-01 00:01:00,200,2,400,vc2\n"
        "2017-10-01 00:02:00,-5,1,5,vc1\n"
        "2017-10-01 00:03:00,50\n"
        "not a time,50,1,50,vc1\n"
        "2017-10-01 00:04:00,300,4,1200,vc1\n"
    )
    code, out, err = run(capsys, "cluster", "simulate", str(trace), "--nodes", "1", "--gpus-per-node", "4", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["jobs"] == 3 and data["finished"] == 3 and data["skipped_rows"] == 3
    assert [s["line"] for s in data["skipped"]] == [4, 5, 6]
    assert set(data["gpu_hours_per_queue"]) == {"vc1", "vc2"}  # a ClusterQueue per virtual cluster
