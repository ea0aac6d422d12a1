"""Trace-driven simulation: replays a workload through the scheduler core (core.py), the very code a live
service calls. Only the clock and the jobs' progress are simulated (jobmodels.py).

The published setup (the Pollux artifact's simulator) is followed: the scheduler runs in rounds every
`interval` seconds (60); a job that arrives between rounds is seen at the next round, and so is a job that
finishes (its GPUs are held until then); every (re)start or change of allocation costs the restart penalty
(30 s) without progress. Rounds in which nothing can change (no arrival, no completion, no timer of the
policy or of a backoff) are skipped, which changes nothing but the run time; a policy that re-plans every
round (goodput, while elastic jobs are active) gets every round.

Optional failures: with `node_mtbf_h`, each node fails after exponentially distributed times (seeded)
and comes back after `repair_h`; the jobs on it lose their work since their last checkpoint and requeue.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from flopwise.cluster.base import SchedulerOptions
from flopwise.cluster.core import Scheduler
from flopwise.cluster.events import (
    Event,
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
    Stop,
    Submit,
)
from flopwise.cluster.jobmodels import JobModels, Runtime
from flopwise.cluster.metrics import Recorder, SimResult
from flopwise.cluster.spec import ClusterSpec, JobSpec
from flopwise.errors import ConfigError


@dataclass
class Workload:
    cluster: ClusterSpec
    jobs: list[JobSpec]
    models: JobModels
    skipped: list[dict] = field(default_factory=list)  # input rows that could not become jobs, with why
    source: str = ""


@dataclass(frozen=True)
class SimConfig:
    policy: str = "fifo"
    interval: float = 60.0
    restart_penalty: float = 30.0
    seed: int = 0
    node_mtbf_h: float = 0.0  # 0: no node failures
    repair_h: float = 1.0
    placement: str | None = None  # pack | spread: overrides the policy's placement strategy

    def __post_init__(self) -> None:
        if not self.interval > 0 or not math.isfinite(self.interval):
            raise ConfigError(f"interval = {self.interval}: must be a positive number of seconds")
        if self.restart_penalty < 0:
            raise ConfigError(f"restart_penalty = {self.restart_penalty}: must be >= 0")
        if self.node_mtbf_h < 0 or self.repair_h <= 0:
            raise ConfigError("node_mtbf_h must be >= 0 and repair_h > 0")


ProgressFn = Callable[[float, int, int], None]  # (simulated time, jobs done, jobs total)


def simulate(workload: Workload, config: SimConfig = SimConfig(), progress: ProgressFn | None = None) -> SimResult:
    cluster, models = workload.cluster, workload.models
    options = SchedulerOptions(restart_penalty_s=config.restart_penalty)
    sched = Scheduler(cluster, config.policy, speed=models, options=options, placement=config.placement)
    models.pollux.round_s = config.interval
    state = sched.new_state()
    jobs = sorted(workload.jobs, key=lambda s: s.submit_time)  # stable: ties keep the input order
    names = [s.name for s in jobs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"job name {dup!r} appears twice in the workload")
    interval = config.interval
    rts: dict[str, Runtime] = {}
    version: dict[str, int] = {}
    done: list[tuple[float, int, str]] = []  # completion heap: (time, version, job)
    rec = Recorder(cluster, models, jobs, interval)
    failures = _failure_times(cluster, config) if config.node_mtbf_h > 0 else []
    every_round = sched.policy.rebalances
    t, i, wake, ended = 0.0, 0, None, 0

    def grid(x: float) -> float:
        return max(interval, math.ceil(x / interval - 1e-9) * interval)

    while True:
        nxt = []
        if i < len(jobs):
            nxt.append(grid(jobs[i].submit_time))
        while done and done[0][1] != version.get(done[0][2]):
            heapq.heappop(done)
        if done and done[0][0] < math.inf:  # a job making no progress never finishes: no event to wait for
            nxt.append(grid(done[0][0]))
        if wake is not None:
            nxt.append(grid(wake))
        if failures and (state.active or i < len(jobs)):
            nxt.append(grid(failures[0][0]))
        if every_round and state.admitted and sched.policy.periodic(state):
            nxt.append(t + interval)  # (with nothing running, a round changes nothing: the same state)
        if not nxt:
            break
        t = max(min(nxt), t + interval) if t > 0 else min(nxt)
        events: list[Event] = []
        while done and done[0][0] <= t:
            at, ver, name = heapq.heappop(done)
            if ver == version.get(name):
                rt = rts[name]
                models.model(rt.spec).advance(rt, t)
                if rt.finished_at is None:  # rounding: the predicted time is the truth
                    rt.finished_at, rt.progress = at, rt.work
                events.append(Finish(name))
                rec.finished(name, rt.finished_at)
                ended += 1
        while failures and failures[0][0] <= t:
            _, kind, node = heapq.heappop(failures)
            events.append(NodeDown(node) if kind == "down" else NodeUp(node))
            if kind == "down":
                heapq.heappush(failures, (t + config.repair_h * 3600.0, "up", node))
            else:
                heapq.heappush(failures, (_next_failure(t, config, node), "down", node))
        while i < len(jobs) and jobs[i].submit_time <= t:
            spec = jobs[i]
            events.append(Submit(spec))
            i += 1
        if sched.policy.needs_progress:
            for job in state.active.values():
                rt = rts.get(job.name)
                if rt is not None and rt.shape:
                    models.model(rt.spec).advance(rt, t)
                    events.append(Progress(job.name, rt.progress))
        result = sched.step(state, t, events)
        wake = result.wake_at
        for d in result.decisions:
            if isinstance(d, Start | Resize):
                rt = rts.get(d.job)
                if rt is None:
                    rt = rts[d.job] = models.runtime(state.jobs[d.job].spec)
                model = models.model(rt.spec)
                model.start(rt, d.flavor, tuple(g for _, g in d.placement), t, config.restart_penalty)
                version[d.job] = version.get(d.job, 0) + 1
                heapq.heappush(done, (model.finish_time(rt), version[d.job], d.job))
                rec.started(d, t)
            elif isinstance(d, Preempt | Stop):
                rt = rts[d.job]
                model = models.model(rt.spec)
                model.advance(rt, t)
                if isinstance(d, Preempt):
                    model.rollback(rt, d.lost_s)
                model.start(rt, None, (), t, 0.0)
                version[d.job] = version.get(d.job, 0) + 1
                rec.stopped(d, t)
            elif isinstance(d, Reject | GiveUp):
                rec.ended(d, t)
                ended += 1
            elif isinstance(d, Requeue):
                rec.requeued(d)
        rec.round(t, state)
        if progress is not None:
            progress(t, ended, len(jobs))
    return rec.result(state, config, workload, t)


def _next_failure(t: float, config: SimConfig, node: str) -> float:
    rng = random.Random(f"{config.seed}:{node}:{t}")
    return t + rng.expovariate(1.0 / (config.node_mtbf_h * 3600.0))


def _failure_times(cluster: ClusterSpec, config: SimConfig) -> list[tuple[float, str, str]]:
    heap = [(_next_failure(0.0, config, n.name), "down", n.name) for n in cluster.nodes]
    heapq.heapify(heap)
    return heap
