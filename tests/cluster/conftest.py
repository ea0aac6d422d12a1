"""Small hand-made clusters and jobs for the scheduler tests, and the shared traces when present."""

from __future__ import annotations

from pathlib import Path

import pytest

from flopwise.cluster.spec import ClusterQueue, ClusterSpec, LocalQueue

# CI clones the repository with shared/ beside it
TRACES = Path(__file__).resolve().parents[2] / ".." / "shared" / "traces"


def two_team_cluster(cohort: str | None = "org", borrowing_limit=None, lending_limit=None, nodes: int = 2,
                     gpus: int = 4) -> ClusterSpec:
    """`nodes` x `gpus` GPUs, two ClusterQueues with half the GPUs each, LocalQueues team-a and team-b."""
    half = nodes * gpus // 2
    queues = {
        "a": ClusterQueue("a", {"gpu": half}, cohort=cohort, borrowing_limit=borrowing_limit),
        "b": ClusterQueue("b", {"gpu": half}, cohort=cohort, lending_limit=lending_limit),
    }
    local = {"team-a": LocalQueue("team-a", "a"), "team-b": LocalQueue("team-b", "b")}
    return ClusterSpec.uniform(nodes, gpus, queues=queues, local_queues=local)


@pytest.fixture
def pollux_traces() -> Path:
    path = TRACES / "pollux"
    if not (path / "workloads").is_dir() or not (path / "apps").is_dir():
        pytest.skip(f"Pollux traces not found at {path.resolve()} (shared/ must sit beside the repository)")
    return path
