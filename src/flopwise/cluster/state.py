"""The scheduler's state: every job's status and allocation, the nodes that are down or were added, the
clock of the last step. It is all the scheduler remembers between steps (the Scheduler object itself holds
only configuration), so a caller that stores `state.to_dict()` and later calls `ClusterState.from_dict`
resumes exactly where it was. Indexes (free GPUs per node, quota use per queue) are derived on load.

Job statuses: queued -> admitted -> succeeded | (preempted: back to queued) | (failed: backoff -> queued,
or failed when no restarts remain); cancelled and rejected end a job at any point.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from flopwise.cluster.events import Placement
from flopwise.cluster.spec import JobSpec, NodeSpec

QUEUED = "queued"
ADMITTED = "admitted"
BACKOFF = "backoff"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
REJECTED = "rejected"
STATUSES = (QUEUED, ADMITTED, BACKOFF, SUCCEEDED, FAILED, CANCELLED, REJECTED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, REJECTED})


@dataclass(slots=True)
class JobState:
    spec: JobSpec
    seq: int  # submission order: the tie-breaker everywhere
    cq: str = ""  # its ClusterQueue
    allowed: tuple[str, ...] = ()  # flavors it may run on, preferred first (its spec's, filtered by feasibility)
    status: str = QUEUED
    submitted_at: float = 0.0
    flavor: str | None = None
    placement: Placement = ()
    gpus: int = 0
    admitted_at: float | None = None  # start of the current allocation
    first_admitted_at: float | None = None
    attained_gpu_s: float = 0.0  # GPU-seconds of closed allocations (restarts included)
    run_s: float = 0.0  # wall seconds of closed allocations
    lost_gpu_s: float = 0.0  # GPU-seconds of work lost to preemptions and crashes
    preemptions: int = 0
    resizes: int = 0
    restarts: int = 0  # failures retried
    backoff_until: float | None = None
    checkpoint_at: float | None = None  # last Checkpoint event
    progress: float = 0.0  # last Progress event, in the job's work units
    level: int = 0  # least-attained-service queue (tiresias)
    level_since: float = 0.0
    ended_at: float | None = None
    reason: str = ""  # why it is in its status (waiting reason, preemption, rejection)

    @property
    def name(self) -> str:
        return self.spec.name

    def attained(self, now: float) -> float:
        """GPU-seconds held so far (what least-attained-service policies rank by)."""
        if self.status == ADMITTED and self.admitted_at is not None:
            return self.attained_gpu_s + (now - self.admitted_at) * self.gpus
        return self.attained_gpu_s

    def lost_if_stopped(self, now: float, restart_penalty: float, crash: bool = False) -> float:
        """Wall seconds of work a stop now would throw away (since the last checkpoint): with periodic
        checkpoints, the time since the last one; without, nothing when it is asked to stop (it saves on
        the way out) and the whole run when it crashes. No work is done during the restart penalty."""
        if self.status != ADMITTED or self.admitted_at is None:
            return 0.0
        start = self.admitted_at + restart_penalty
        if now <= start:
            return 0.0
        since = now - start
        if self.checkpoint_at is not None and self.checkpoint_at > start:
            since = now - self.checkpoint_at
        interval = self.spec.checkpoint_interval_s
        if interval > 0:
            return min(since, (now - start) % interval)
        return since if crash else 0.0

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["spec"] = self.spec.to_dict()
        out["placement"] = [list(p) for p in self.placement]
        out["allowed"] = list(self.allowed)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> JobState:
        data = dict(data)
        data["spec"] = JobSpec.from_dict(data["spec"])
        data["placement"] = tuple((str(n), int(g)) for n, g in data.get("placement", ()))
        data["allowed"] = tuple(data.get("allowed", ()))
        return cls(**data)


@dataclass
class ClusterState:
    now: float = 0.0
    seq: int = 0
    jobs: dict[str, JobState] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    added: list[NodeSpec] = field(default_factory=list)  # nodes that joined after the cluster spec
    # derived indexes (rebuilt by `reindex`, never serialised)
    active: dict[str, JobState] = field(default_factory=dict, repr=False)  # not terminal
    waiting: dict[str, JobState] = field(default_factory=dict, repr=False)  # queued
    sleeping: dict[str, JobState] = field(default_factory=dict, repr=False)  # in backoff
    admitted: dict[str, JobState] = field(default_factory=dict, repr=False)  # holding GPUs
    used: dict[str, int] = field(default_factory=dict, repr=False)  # node -> GPUs allocated
    usage: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)  # (queue, flavor) -> GPUs

    def reindex(self) -> None:
        self.active = {k: j for k, j in self.jobs.items() if j.status not in TERMINAL}
        self.waiting = {k: j for k, j in self.active.items() if j.status == QUEUED}
        self.sleeping = {k: j for k, j in self.active.items() if j.status == BACKOFF}
        self.admitted = {k: j for k, j in self.active.items() if j.status == ADMITTED}
        self.used, self.usage = {}, {}
        for job in self.active.values():
            if job.status == ADMITTED:
                self._count(job, +1)

    def _count(self, job: JobState, sign: int) -> None:
        for node, gpus in job.placement:
            self.used[node] = self.used.get(node, 0) + sign * gpus
        key = (job.cq, job.flavor or "")
        self.usage[key] = self.usage.get(key, 0) + sign * job.gpus

    def add(self, job: JobState) -> None:
        """A new job, queued."""
        self.jobs[job.name] = self.active[job.name] = self.waiting[job.name] = job
        job.status = QUEUED

    def allocate(self, job: JobState, flavor: str, placement: Placement, now: float) -> None:
        self.waiting.pop(job.name, None)
        self.admitted[job.name] = job
        job.flavor, job.placement = flavor, tuple(placement)
        job.gpus = sum(g for _, g in placement)
        job.status, job.admitted_at = ADMITTED, now
        if job.first_admitted_at is None:
            job.first_admitted_at = now
        self._count(job, +1)

    def release(self, job: JobState, now: float) -> None:
        """Close the job's current allocation (its GPU time is added to what it attained)."""
        if job.status != ADMITTED:
            return
        self.admitted.pop(job.name, None)
        self._count(job, -1)
        held = max(0.0, now - (job.admitted_at if job.admitted_at is not None else now))
        job.attained_gpu_s += held * job.gpus
        job.run_s += held
        job.placement, job.gpus, job.admitted_at = (), 0, None
        job.status = QUEUED
        self.waiting[job.name] = job

    def backoff(self, job: JobState, until: float) -> None:
        self.waiting.pop(job.name, None)
        self.sleeping[job.name] = job
        job.status, job.backoff_until = BACKOFF, until

    def requeue(self, job: JobState) -> None:
        self.sleeping.pop(job.name, None)
        job.status, job.backoff_until = QUEUED, None
        self.waiting[job.name] = job

    def end(self, job: JobState, status: str, now: float, reason: str = "") -> None:
        self.release(job, now)
        job.status, job.ended_at, job.reason = status, now, reason
        self.active.pop(job.name, None)
        self.waiting.pop(job.name, None)
        self.sleeping.pop(job.name, None)

    def to_dict(self) -> dict:
        return {
            "now": self.now,
            "seq": self.seq,
            "jobs": [j.to_dict() for j in self.jobs.values()],
            "down": sorted(self.down),
            "added": [dataclasses.asdict(n) for n in self.added],
        }

    @classmethod
    def from_dict(cls, data: dict) -> ClusterState:
        state = cls(
            now=float(data.get("now", 0.0)),
            seq=int(data.get("seq", 0)),
            jobs={j["spec"]["name"]: JobState.from_dict(j) for j in data.get("jobs", [])},
            down=set(data.get("down", [])),
            added=[NodeSpec(**n) for n in data.get("added", [])],
        )
        state.reindex()
        return state
