"""`--ray`: a local Ray cluster of two logical nodes, each with 2 of a custom resource standing in for GPUs.
A gang on one node is reserved STRICT_PACK, one across nodes PACK, and its ranks get torchrun's rendezvous."""

from __future__ import annotations

import pytest

from tests.cluster.service.conftest import FAST, A, Api, py, write_tokens

RANK_ENV = "import os; print('rank', os.environ['NODE_RANK'], 'of', os.environ['NNODES'], os.environ['MASTER_ADDR'], " \
           "os.environ['PET_MASTER_PORT'], os.environ['NPROC_PER_NODE'])"


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray", reason="ray is not installed")
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"fake_gpu": 2},
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1, resources={"fake_gpu": 2})
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_ray_gangs_are_placement_groups_with_rendezvous(ray_cluster, tmp_path):
    from flopwise.cluster.service.server import start

    home = tmp_path / "home"
    running = start(home, port=0, options=FAST, tokens=write_tokens(tmp_path / "tokens.toml"),
                    ray=ray_cluster.address, ray_resource="fake_gpu")
    try:
        api = Api(running.url, A)
        nodes = api.get("/api/nodes").json()
        assert len(nodes) == 2 and {n["gpus"] for n in nodes} == {2} and {n["flavor"] for n in nodes} == {"fake_gpu"}
        one = api.submit(id="one-node", kind="command", gpus=2, topology="node", argv=py(RANK_ENV))
        span = api.submit(id="two-nodes", kind="command", gpus=4, argv=py(RANK_ENV))
        for job_id in (one, span):
            job = api.wait(job_id, "succeeded", timeout=120)
            assert job["attempts"] == 1
        d = running.service.executor.job_dir
        assert "placement group STRICT_PACK [{'fake_gpu': 2.0}]" in (d(one) / "log.txt").read_text()
        header = (d(span) / "log.txt").read_text()
        assert "placement group PACK [{'fake_gpu': 2.0}, {'fake_gpu': 2.0}]" in header
        ray_nodes = header.split("on Ray nodes ")[1].split(";")[0].split(", ")
        assert len(set(ray_nodes)) == 2  # 2 + 2 GPUs cannot share a node of 2
        ranks = [(d(span) / f"log-rank{r}.txt").read_text().split() for r in (0, 1)]
        assert [r[:4] for r in ranks] == [["rank", "0", "of", "2"], ["rank", "1", "of", "2"]]
        assert ranks[0][4:] == ranks[1][4:] and ranks[0][6] == "2"  # one master address and port; 2 per node
        assert {a["node"] for a in api.get(f"/api/jobs/{span}").json()["allocations"]} <= {n["name"] for n in nodes}
    finally:
        running.stop()
