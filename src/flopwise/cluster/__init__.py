"""The shared GPU pool's scheduler: a pure core, its policies, and a trace-driven simulator.

Layers (top to bottom):
- spec.py       what the scheduler is told: flavors, nodes, ClusterQueues / cohorts / LocalQueues (Kueue's
                vocabulary), and JobSpec, the fields of a job TOML. Frozen dataclasses with to_dict/from_dict.
- events.py     what goes in (Submit, Finish, Fail, Cancel, NodeDown, NodeUp, Progress, Checkpoint) and
                what comes out (Start, Resize, Preempt, Stop, Requeue, GiveUp, Reject); dicts both ways.
- state.py      ClusterState: every job's status, allocation and accounting; all the core remembers.
- core.py       Scheduler.step(state, now, events) -> StepResult(decisions, wake_at): admission with quota,
                borrowing and reclaim, placement, preemption with lost work accounted, restarts with backoff.
- base.py, policies.py, goodput.py   fifo, priority, drf, tiresias, goodput; quota.py, placement.py.
- jobmodels.py, apps.py, speed.py    how fast jobs run: trace durations, the Pollux artifact's measured
                tables, and the planner (speed.py is the one module calling flopwise.plan).
- simulator.py, traces.py, metrics.py, plot.py   replaying workloads through the same core.

Using the core from a live service (the contract):

    sched = Scheduler(cluster_spec, policy="priority", speed=None | a SpeedModel, options=SchedulerOptions())
    state = ClusterState.from_dict(json.loads(row)) if stored else sched.new_state()
    result = sched.step(state, now, [Submit(JobSpec.from_dict(toml_table)), Finish("job-7"), ...])
    store(json.dumps(state.to_dict()))          # persist after every step, before acting (crash safety)
    for d in result.decisions:                  # then carry them out, in order (preemptions come first)
        Start -> launch on d.placement ((node, GPUs), ...); d.resume: from the latest checkpoint
        Resize -> checkpoint, stop, start again on the new placement
        Preempt -> SIGTERM (checkpoint and exit); the job stays queued; d.lost_s of work is gone
        Stop -> kill for good (cancelled); Requeue -> nothing to run until d.at; GiveUp/Reject -> record why
    call step again on the next event, at result.wake_at, and every interval while policy.periodic(state)

- Times are the caller's clock in seconds; `now` never goes backwards. The core keeps no clock, does no
  I/O, uses no threads or randomness: the same state and events give the same decisions.
- Report Progress(job, work done) for policies that read it (policy.needs_progress: goodput) and
  Checkpoint(job) when a job saves one (a crash then loses only the work after it).
- A job submitted twice with the same spec is one job; a different spec under a known name is rejected.
- Events naming unknown jobs or nodes are ignored; jobs that can never run are rejected with a reason.
"""

from flopwise.cluster.base import Claim, Context, Policy, SchedulerOptions, SpeedModel
from flopwise.cluster.core import Scheduler, SchedulerError
from flopwise.cluster.events import (
    Cancel,
    Checkpoint,
    Fail,
    Finish,
    GiveUp,
    NodeDown,
    NodeUp,
    Preempt,
    Progress,
    Reject,
    Requeue,
    Resize,
    Start,
    StepResult,
    Stop,
    Submit,
    decision_from_dict,
    event_from_dict,
    to_dict,
)
from flopwise.cluster.policies import POLICIES, make_policy
from flopwise.cluster.spec import ClusterQueue, ClusterSpec, Flavor, JobSpec, LocalQueue, NodeSpec, load_cluster
from flopwise.cluster.state import ClusterState, JobState

__all__ = [
    "POLICIES",
    "Cancel",
    "Checkpoint",
    "Claim",
    "ClusterQueue",
    "ClusterSpec",
    "ClusterState",
    "Context",
    "Fail",
    "Finish",
    "Flavor",
    "GiveUp",
    "JobSpec",
    "JobState",
    "LocalQueue",
    "NodeDown",
    "NodeSpec",
    "NodeUp",
    "Policy",
    "Preempt",
    "Progress",
    "Reject",
    "Requeue",
    "Resize",
    "Scheduler",
    "SchedulerError",
    "SchedulerOptions",
    "SpeedModel",
    "Start",
    "StepResult",
    "Stop",
    "Submit",
    "decision_from_dict",
    "event_from_dict",
    "load_cluster",
    "make_policy",
    "to_dict",
]
