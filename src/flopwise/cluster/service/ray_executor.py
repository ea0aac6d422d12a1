"""The Ray executor (`flopwise cluster up --ray ADDRESS|auto`): the nodes come from Ray, and each job's gang is
reserved as a placement group before any rank starts: STRICT_PACK when the scheduler placed it on one node,
PACK when it spans nodes, one bundle per node of the scheduler's placement (`{RESOURCE: GPUs}`). One Ray actor
per bundle starts that node's rank under runner.py, with the rendezvous torchrun expects in its environment
(MASTER_ADDR/MASTER_PORT of rank 0's node, NNODES, NODE_RANK, NPROC_PER_NODE and the PET_* twins torchrun
reads), so `torchrun` or `flopwise train --nproc` in the job joins the others.

The GPU resource is Ray's `GPU` by default; `resource` names another (tests use a custom resource standing in
for GPUs on logical nodes). A job's log and exit files are written where its rank runs (one machine, or a
shared filesystem). Jobs do not outlive the service here: after a restart their ranks are gone and they restart
by their policy.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from flopwise.cluster.events import Placement
from flopwise.cluster.spec import ClusterSpec, Flavor, NodeSpec
from flopwise.errors import ConfigError

log = logging.getLogger(__name__)


def connect(address: str):
    import ray

    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - Ray raises many kinds
            raise ConfigError(f"--ray {address}: cannot connect to the Ray cluster ({exc})") from None
    return ray


def ray_cluster(ray, resource: str = "GPU", queues: ClusterSpec | None = None) -> ClusterSpec:
    """The alive Ray nodes that have `resource`, as the scheduler's nodes (name: the Ray node id); the flavor is
    the node's `accelerator_type:X` resource when Ray reports one, else `resource` in lower case."""
    nodes, flavors = [], {}
    for n in ray.nodes():
        res = n.get("Resources", {})
        if not n.get("Alive") or res.get(resource, 0) < 1:
            continue
        kinds = [k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")]
        flavor = kinds[0] if kinds else resource.lower()
        flavors.setdefault(flavor, Flavor(flavor))
        nodes.append(NodeSpec(n["NodeID"], flavor, int(res[resource])))
    if not nodes:
        raise ConfigError(f"the Ray cluster has no alive node with resource {resource!r}")
    if queues is None:
        return ClusterSpec.build(flavors, tuple(nodes))
    return ClusterSpec.build(flavors, tuple(nodes), queues.cluster_queues, queues.local_queues)


def _rank_actor(ray):
    @ray.remote(num_cpus=0)
    class Rank:
        """One node's share of a job: its processes under runner.py."""

        def start(self, argv: list[str], env: dict, cwd: str | None, log_path: str, exit_file: str) -> tuple[str, int]:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as fh:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "flopwise.cluster.service.runner", exit_file, "--", *argv],
                    cwd=cwd or None, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, stdout=fh,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            return ray.get_runtime_context().get_node_id(), self.proc.pid

        def poll(self) -> int | None:
            return self.proc.poll()

        def signal(self, sig: int) -> None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

        def address(self) -> str:
            return socket.gethostbyname(socket.gethostname())

    return Rank


@dataclass
class RayJob:
    job: str
    attempt: int
    pg: object
    actors: list
    nodes: list[str]
    strategy: str
    kill_at: float | None = None
    done: dict[int, int] = field(default_factory=dict)  # rank -> exit status
    started: float = field(default_factory=time.time)
    cpu_s: float = 0.0


class RayExecutor:
    def __init__(self, ray, home: Path, resource: str = "GPU", grace_s: float = 30.0, ready_timeout_s: float = 120.0):
        self.ray, self.home, self.resource, self.grace_s = ray, home, resource, grace_s
        self.ready_timeout_s = ready_timeout_s
        self.Rank = _rank_actor(ray)
        self.procs: dict[str, RayJob] = {}

    def job_dir(self, job: str) -> Path:
        return self.home / "jobs" / job

    def start(self, job: str, attempt: int, argv: list[str], cwd: str | None, env: dict[str, str],
              placement: Placement = ()) -> int:
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        ray = self.ray
        bundles = [{self.resource: float(k)} for _, k in placement]
        strategy = "STRICT_PACK" if len(bundles) == 1 else "PACK"
        pg = placement_group(bundles, strategy=strategy, name=f"flopwise-{job}-{attempt}")
        if not pg.wait(self.ready_timeout_s):
            remove_placement_group(pg)
            raise OSError(f"Ray could not reserve {bundles} ({strategy}) within {self.ready_timeout_s:g} s")
        d = self.job_dir(job)
        (d / "out").mkdir(parents=True, exist_ok=True)
        actors = [self.Rank.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i),
                                    resources={self.resource: float(k)}).remote()
                  for i, (_, k) in enumerate(placement)]
        master = ray.get(actors[0].address.remote())
        port = 29500 + (hash((job, attempt)) % 2000)
        nodes = []
        for rank, (actor, (_, k)) in enumerate(zip(actors, placement, strict=True)):
            rdzv = {"MASTER_ADDR": master, "MASTER_PORT": str(port), "NNODES": str(len(actors)),
                    "NODE_RANK": str(rank), "NPROC_PER_NODE": str(k)}
            rdzv.update({f"PET_{key}": value for key, value in rdzv.items()})
            node, _pid = ray.get(actor.start.remote(argv, {**env, **rdzv}, cwd, str(d / f"log-rank{rank}.txt"),
                                                    str(d / f"exit-{attempt}-rank{rank}")))
            nodes.append(node)
        self.procs[job] = RayJob(job, attempt, pg, actors, nodes, strategy)
        with open(d / "log.txt", "ab") as fh:
            fh.write(f"--- attempt {attempt}: placement group {strategy} {bundles} on Ray nodes "
                     f"{', '.join(n[:8] for n in nodes)}; rank logs in log-rank*.txt\n".encode())
        return os.getpid()  # the ranks' processes live on the Ray nodes; the service's pid marks the allocation

    def adopt(self, job: str, attempt: int, pid: int | None) -> bool:
        return False  # the ranks' actors die with the driver

    def poll(self) -> list[tuple[str, int, int]]:
        ended, now = [], time.time()
        for job, rj in list(self.procs.items()):
            codes = self.ray.get([a.poll.remote() for a in rj.actors])
            for rank, code in enumerate(codes):
                if code is not None:
                    rj.done.setdefault(rank, 128 - code if code < 0 else code)
            failed = [c for c in rj.done.values() if c != 0]
            if failed and len(rj.done) < len(rj.actors):  # one rank failed: the gang cannot go on
                for a in rj.actors:
                    a.signal.remote(signal.SIGTERM)
                rj.kill_at = rj.kill_at or now + self.grace_s
            if len(rj.done) == len(rj.actors):
                self._release(rj)
                del self.procs[job]
                ended.append((job, rj.attempt, failed[0] if failed else 0))
            elif rj.kill_at is not None and now >= rj.kill_at:
                for a in rj.actors:
                    a.signal.remote(signal.SIGKILL)
                rj.kill_at = None
        return ended

    def _release(self, rj: RayJob) -> None:
        from ray.util.placement_group import remove_placement_group

        for a in rj.actors:
            self.ray.kill(a)
        remove_placement_group(rj.pg)

    def terminate(self, job: str, grace_s: float | None = None) -> bool:
        rj = self.procs.get(job)
        if rj is None:
            return False
        for a in rj.actors:
            a.signal.remote(signal.SIGTERM)
        rj.kill_at = time.time() + (self.grace_s if grace_s is None else grace_s)
        return True

    def kill(self, job: str) -> None:
        rj = self.procs.get(job)
        if rj is not None:
            for a in rj.actors:
                a.signal.remote(signal.SIGKILL)

    def running(self) -> dict:
        return dict(self.procs)

    def cpu_seconds(self, job: str) -> float | None:
        return None

