"""The interface between the scheduler core and its policies.

A policy sees a `Context` (the cluster, the state, the time) and returns `Claim`s: jobs in the order it
wants them served, each with the allocations it would accept ((flavor, GPUs), best first) and whether a
running job may lose its place to a claim ranked above it. Running jobs it does not list (or lists as not
displaceable) keep their allocation; only quota reclaim can take it. The core does the rest the same way for every
policy: quota (nominal first, then borrowing, so lent quota is reclaimed), physical capacity, placement,
preemption of the displaced jobs that a placement actually needs, and backfill.

A `SpeedModel` tells a policy how fast a job runs on an allocation (work units per second) and how much
work is left; only speed-aware policies (goodput) need one. It must be deterministic and cheap (cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from flopwise.cluster.placement import Topology
from flopwise.cluster.spec import ClusterSpec, JobSpec
from flopwise.cluster.state import ADMITTED, ClusterState, JobState

Option = tuple[str, int]  # (flavor, GPUs)


@dataclass(frozen=True)
class SchedulerOptions:
    restart_penalty_s: float = 30.0  # a job makes no progress for this long after each (re)start or resize
    backoff_base_s: float = 10.0  # first restart delay after a failure; doubles per failure
    backoff_max_s: float = 600.0
    las_threshold_gpu_s: float = 16 * 3600.0  # tiresias: demote to the second queue at 16 GPU-hours
    goodput_resize_gain: float = 0.05  # goodput: resize a running job only for this relative gain or more


class SpeedModel(Protocol):
    def rate(self, job: JobState, flavor: str, gpus: int) -> float:
        """Work units per second on `gpus` GPUs of `flavor`, packed on as few nodes as possible; 0: cannot run."""

    def remaining(self, job: JobState) -> float:
        """Work units left (from the job's spec and its last reported progress)."""

    def infeasible(self, spec: JobSpec, flavor: str, gpus: int) -> str | None:
        """Why the job can never run on `gpus` GPUs of `flavor` (e.g. its model does not fit), or None."""

    def runs_on(self, job: JobState, flavor: str, shape: tuple[int, ...]) -> bool:
        """Whether the job makes progress on a placement of this shape (GPUs per node): a model that fits packed
        may find no layout on GPUs scattered one or two per node."""


@dataclass(slots=True)
class Claim:
    job: JobState
    options: tuple[Option, ...]  # acceptable allocations, preferred first
    displaceable: bool = False  # a running job may be preempted for claims ranked above it

    @property
    def running(self) -> bool:
        return self.job.status == ADMITTED


@dataclass
class Context:
    cluster: ClusterSpec
    state: ClusterState
    now: float
    topo: Topology
    options: SchedulerOptions
    speed: SpeedModel | None
    capacity: dict[str, int]  # GPUs of nodes that are up, per flavor

    def sizes(self, job: JobState, flavor: str, upto: int | None = None) -> list[int]:
        """The GPU counts `job` may get on `flavor`, largest first (up to `upto`, default its max)."""
        spec = job.spec
        hi = min(upto if upto is not None else spec.max_gpus, self.topo.largest(flavor, spec.topology))
        if not spec.elastic:
            return [spec.gpus] if spec.gpus <= hi else []
        return self.topo.valid_sizes(flavor, spec.min_gpus, hi, spec.gang)

    def default_options(self, job: JobState) -> tuple[Option, ...]:
        """A running job keeps what it has; a queued one asks for its `gpus` (elastic: down to its minimum,
        Kueue's partial admission) on each allowed flavor in order."""
        if job.status == ADMITTED:
            return ((job.flavor or "", job.gpus),)
        return tuple((f, n) for f in job.allowed for n in self.sizes(job, f, upto=job.spec.gpus))


class Policy:
    """Base: first-come first-served claims with default options. Subclasses override `claims`."""

    name = "base"
    placement = "pack"
    rebalances = False  # may change running jobs' allocations: a pass at every step, queue or not
    preemptive = True  # its order may displace running jobs (fifo and drf: never, quota reclaim aside)
    needs_progress = False  # reads JobState.progress (the caller sends Progress events)

    def prepare(self, ctx: Context) -> None:
        """Update policy bookkeeping kept in the job states (e.g. LAS levels) at the start of a step."""

    def claims(self, ctx: Context, running: bool = True) -> list[Claim]:
        """Claims in the order to serve them. `running=False`: the queued jobs' claims only (the core asks
        so when they all fit beside the running jobs, in which case no running job can be displaced)."""
        raise NotImplementedError

    def periodic(self, state: ClusterState) -> bool:
        """Whether the policy wants a pass every scheduling interval even without events (e.g. elastic jobs
        whose best size changes as they progress). The simulator and the service call step at each
        interval while this holds."""
        return False

    def wake_at(self, ctx: Context) -> float | None:
        """The next time this policy would decide differently without any event (None: never)."""
        return None
