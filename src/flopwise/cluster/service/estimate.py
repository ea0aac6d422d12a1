"""When will each queued job start? The scheduler core run forward from the live state (a copy): running jobs
end after their expected run time, queued ones start when the core would start them, and so on until every
queued job has started. A job's expected run time is its `duration_s` when the job file gives one (else
`default_s`); a running job has run part of it already.
"""

from __future__ import annotations

import time

from flopwise.cluster import ClusterSpec, ClusterState, Finish, JobSpec, Preempt, Resize, Scheduler, Start, Stop, Submit

MAX_STEPS = 20_000


def estimate_starts(cluster: ClusterSpec, policy: str, saved: dict | None, now: float, new: list[JobSpec] = (),
                    default_s: float = 3600.0, budget_s: float = 2.0) -> dict[str, float]:
    """Estimated start time (the service's clock) of every job queued or in backoff in `saved` (a stored
    ClusterState) and of the `new` jobs the loop has not given the core yet. Jobs the forward run does not reach
    within `budget_s` of computing (thousands queued) or that would never start are left out (no estimate)."""
    deadline = time.perf_counter() + budget_s
    sched = Scheduler(cluster, policy)
    state = ClusterState.from_dict(saved) if saved else sched.new_state()
    t = max(now, state.now)

    def run_time(name: str) -> float:
        spec = state.jobs[name].spec
        return spec.duration_s if spec.duration_s else default_s

    finish: dict[str, float] = {}
    for job in state.admitted.values():
        held = t - (job.admitted_at if job.admitted_at is not None else t)
        done = job.run_s + held
        finish[job.name] = t + max(run_time(job.name) - done, 1.0)
    waiting = set(state.waiting) | set(state.sleeping) | {spec.name for spec in new if spec.name not in state.jobs}
    starts: dict[str, float] = {}
    wake: float | None = t
    submits = [Submit(spec) for spec in new if spec.name not in state.jobs]
    for _ in range(MAX_STEPS):
        if not waiting - set(starts) or time.perf_counter() > deadline:
            break
        times = list(finish.values()) + ([wake] if wake is not None else [])
        if not times:
            break
        t = max(t, min(times))
        events = [Finish(name) for name, at in finish.items() if at <= t]
        for e in events:
            finish.pop(e.job)
        events, submits = [*submits, *events], []
        result = sched.step(state, t, events)
        for d in result.decisions:
            if isinstance(d, Start | Resize):
                starts.setdefault(d.job, t)
                finish[d.job] = t + run_time(d.job)
            elif isinstance(d, Preempt | Stop):
                finish.pop(d.job, None)
        wake = result.wake_at if result.wake_at is not None and result.wake_at > t else None
    return {name: at for name, at in starts.items() if name in waiting}
