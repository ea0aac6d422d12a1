"""What goes into the scheduler (events) and what comes out (decisions). Plain frozen dataclasses; each
converts to a dict with a `type` key (`to_dict`) and back (`event_from_dict`, `decision_from_dict`).

Events (the caller reports what happened since the last step):
  Submit(spec)            a new job
  Finish(job)             the job's work is done (its processes exited 0)
  Fail(job, reason)       the job crashed; it restarts after a backoff while restarts remain
  Cancel(job)             the user cancels it (queued or running)
  NodeDown(node)          a node is gone; jobs on it lose the work since their last checkpoint and requeue
  NodeUp(node)            a node (back or new: pass a NodeSpec for a new one) can take jobs
  Progress(job, progress) work done so far, in the job's work units (tokens, epochs of progress, seconds);
                          the goodput policy uses it to know what is left
  Checkpoint(job)         the job has just saved a checkpoint (work before now is safe)
Time passing is a step with no events (a tick).

Decisions (the caller carries them out):
  Start(job, flavor, placement, gpus, resume)   admit and place; resume = continue from a checkpoint
  Resize(job, flavor, placement, gpus, from_gpus) restart the job on a new allocation (checkpoint, stop,
                                                start again); the restart penalty is charged
  Preempt(job, reason, lost_s, lost_gpu_s)      stop it and keep it queued; lost_s = wall seconds of work
                                                since its last checkpoint that must be redone
  Stop(job, reason)                             stop it for good (cancelled)
  Requeue(job, at, restarts)                    a failed job will be queued again at `at` (backoff)
  GiveUp(job, reason)                           a failed job has no restarts left: it is failed
  Reject(job, reason)                           the job can never run here (too large, no flavor, quota)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from flopwise.cluster.spec import JobSpec, NodeSpec
from flopwise.errors import ConfigError

Placement = tuple[tuple[str, int], ...]  # (node, GPUs) in placement order


@dataclass(frozen=True, slots=True)
class Submit:
    spec: JobSpec


@dataclass(frozen=True, slots=True)
class Finish:
    job: str


@dataclass(frozen=True, slots=True)
class Fail:
    job: str
    reason: str = "failed"


@dataclass(frozen=True, slots=True)
class Cancel:
    job: str


@dataclass(frozen=True, slots=True)
class NodeDown:
    node: str


@dataclass(frozen=True, slots=True)
class NodeUp:
    node: str | NodeSpec


@dataclass(frozen=True, slots=True)
class Progress:
    job: str
    progress: float


@dataclass(frozen=True, slots=True)
class Checkpoint:
    job: str


Event = Submit | Finish | Fail | Cancel | NodeDown | NodeUp | Progress | Checkpoint


@dataclass(frozen=True, slots=True)
class Start:
    job: str
    flavor: str
    placement: Placement
    gpus: int
    resume: bool = False


@dataclass(frozen=True, slots=True)
class Resize:
    job: str
    flavor: str
    placement: Placement
    gpus: int
    from_gpus: int


@dataclass(frozen=True, slots=True)
class Preempt:
    job: str
    reason: str
    lost_s: float = 0.0
    lost_gpu_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Stop:
    job: str
    reason: str


@dataclass(frozen=True, slots=True)
class Requeue:
    job: str
    at: float
    restarts: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    job: str
    reason: str


@dataclass(frozen=True, slots=True)
class Reject:
    job: str
    reason: str


Decision = Start | Resize | Preempt | Stop | Requeue | GiveUp | Reject

_EVENTS = {c.__name__: c for c in (Submit, Finish, Fail, Cancel, NodeDown, NodeUp, Progress, Checkpoint)}
_DECISIONS = {c.__name__: c for c in (Start, Resize, Preempt, Stop, Requeue, GiveUp, Reject)}


@dataclass
class StepResult:
    decisions: list[Decision]
    wake_at: float | None  # call step again at this time even without events (None: only on events)

    def to_dict(self) -> dict:
        return {"decisions": [to_dict(d) for d in self.decisions], "wake_at": self.wake_at}


def to_dict(obj: Event | Decision) -> dict:
    out = {"type": type(obj).__name__}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, JobSpec):
            value = value.to_dict()
        elif isinstance(value, NodeSpec):
            value = dataclasses.asdict(value)
        elif f.name == "placement":
            value = [list(p) for p in value]
        out[f.name] = value
    return out


def _from_dict(data: dict, table: dict) -> object:
    data = dict(data)
    kind = data.pop("type", None)
    if kind not in table:
        raise ConfigError(f"unknown type {kind!r}; expected one of {', '.join(table)}")
    if kind == "Submit":
        data["spec"] = JobSpec.from_dict(data["spec"])
    if kind == "NodeUp" and isinstance(data.get("node"), dict):
        data["node"] = NodeSpec(**data["node"])
    if "placement" in data:
        data["placement"] = tuple((str(n), int(g)) for n, g in data["placement"])
    return table[kind](**data)


def event_from_dict(data: dict) -> Event:
    return _from_dict(data, _EVENTS)  # type: ignore[return-value]


def decision_from_dict(data: dict) -> Decision:
    return _from_dict(data, _DECISIONS)  # type: ignore[return-value]
