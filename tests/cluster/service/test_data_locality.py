"""A job naming a data pipeline: its node prepares the data once into the pipeline's content-addressed cache;
the next job on the same data starts without preparing it again; the scheduler prefers nodes holding it."""

from __future__ import annotations

from flopwise.cluster import ClusterSpec, Scheduler, Start, Submit
from flopwise.cluster.spec import JobSpec
from tests.cluster.service.conftest import A, Api, py

PIPELINE = """
[[sources]]
type = "files"
name = "docs"
path = "docs"
glob = "*.txt"

[tokenizer]
vocab_size = 300

[output]
dir = "out"
eval_fraction = 0.1

[run]
cache_dir = "cache"
workers = 1
"""
SHOW = ("import os, pathlib; d = os.environ['FLOPWISE_DATA_SHARDS']; "
        "print('shards', d, (pathlib.Path(d) / 'manifest.json').is_file())")


def test_second_job_on_the_same_data_does_not_prepare_it_again(service, tmp_path):
    docs = tmp_path / "data" / "docs"
    docs.mkdir(parents=True)
    for i in range(30):
        (docs / f"{i}.txt").write_text(f"document {i}: " + " ".join(f"word{(i * j) % 50}" for j in range(200)))
    pipeline = tmp_path / "data" / "pipeline.toml"
    pipeline.write_text(PIPELINE)
    api = Api(service.url, A)
    first = api.submit(id="first", kind="command", data=str(pipeline), argv=py(SHOW))
    api.wait(first, "succeeded", timeout=120)
    second = api.submit(id="second", kind="command", data=str(pipeline), argv=py(SHOW))
    api.wait(second, "succeeded", timeout=60)
    logs = {j: api.get(f"/api/jobs/{j}/logs").json()["text"] for j in (first, second)}
    assert "preparing data" in logs[first] and "already on this node" not in logs[first]
    assert "preparing data" not in logs[second] and "already on this node" in logs[second]
    shards = [next(line for line in logs[j].splitlines() if line.startswith("shards ")) for j in (first, second)]
    assert shards[0] == shards[1] and shards[0].endswith(" True")
    held = service.service.store.node_data()
    assert len(held) == 1 and held[0]["job_id"] == first
    key = api.get(f"/api/jobs/{second}").json()["spec"]["data_key"]
    assert key == held[0]["key"]  # the key computed at submission is the one the pipeline cached under
    bad = api.post("/api/jobs", json={"job": {"kind": "command", "argv": ["true"], "data": str(tmp_path / "nope.toml")}})
    assert bad.status_code == 400 and "data" in bad.json()["detail"]


def test_placement_prefers_the_nodes_holding_the_data():
    cluster = ClusterSpec.uniform(3, 4)
    plain, local = Scheduler(cluster, "fifo"), Scheduler(cluster, "fifo")
    local.locality = lambda job: ["node-0002"] if job.name == "reader" else []
    for sched, expect in ((plain, "node-0000"), (local, "node-0002")):
        result = sched.step(sched.new_state(), 0.0, [Submit(JobSpec("reader", gpus=2))])
        (start,) = [d for d in result.decisions if isinstance(d, Start)]
        assert start.placement == ((expect, 2),)
