"""Scheduling policies, selectable by name: fifo, priority, drf, tiresias, goodput.

Each returns claims in the order it wants jobs served; the core (core.py) applies quota, capacity,
placement and preemption the same way for all of them.

- fifo: submission order; running jobs are never displaced (quota reclaim aside); later jobs that fit
  run ahead of an earlier one that does not (Kueue's BestEffortFIFO).
- priority: higher `priority` first, then submission order; a queued job may preempt running jobs of
  strictly lower priority.
- drf: weighted dominant resource fairness across ClusterQueues: the next job served comes from the queue
  whose dominant share (use / capacity, the largest over flavors, divided by its weight) is lowest, by
  progressive filling; within a queue, priority then submission order. Non-preemptive (reclaim aside).
- tiresias: discretised two-queue least-attained-service (Gu et al., NSDI'19) as the Pollux artifact
  runs it (`simulator/tiresias.py`): a job enters queue 0 and is demoted to queue 1 once it has held
  16 GPU-hours; queue 0 in submission order, queue 1 in order of demotion; a job gets its fixed GPU count
  as a gang on the nodes with most free GPUs; preemptive.
- goodput (goodput.py): the project's own speed-aware policy.
"""

from __future__ import annotations

import heapq

from flopwise.cluster.base import Claim, Context, Policy
from flopwise.cluster.goodput import Goodput
from flopwise.cluster.quota import QuotaBook
from flopwise.cluster.state import ADMITTED, JobState
from flopwise.errors import ConfigError


class Fifo(Policy):
    name = "fifo"
    preemptive = False

    def claims(self, ctx: Context, running: bool = True) -> list[Claim]:  # running jobs keep their place
        return [Claim(j, ctx.default_options(j)) for j in sorted(ctx.state.waiting.values(), key=lambda j: j.seq)]


class Priority(Policy):
    name = "priority"

    def claims(self, ctx: Context, running: bool = True) -> list[Claim]:
        jobs = [*(ctx.state.admitted.values() if running else ()), *ctx.state.waiting.values()]
        # at equal priority a running job ranks first, so only strictly higher priority displaces it
        jobs.sort(key=lambda j: (-j.spec.priority, j.status != ADMITTED, j.seq))
        return [Claim(j, ctx.default_options(j), displaceable=True) for j in jobs]


class Drf(Policy):
    name = "drf"
    preemptive = False

    def claims(self, ctx: Context, running: bool = True) -> list[Claim]:
        out: list[Claim] = []  # running jobs are not listed: they keep their place
        book = QuotaBook(ctx.cluster, ctx.state.usage)
        per_queue: dict[str, list[JobState]] = {}
        for job in ctx.state.waiting.values():
            per_queue.setdefault(job.cq, []).append(job)
        heap = []
        for cq, jobs in per_queue.items():
            jobs.sort(key=lambda j: (-j.spec.priority, j.seq), reverse=True)  # pop() takes the best
            heap.append((book.share(cq, ctx.capacity), cq))
        heapq.heapify(heap)
        while heap:  # progressive filling: serve the queue with the lowest dominant share next
            _, cq = heapq.heappop(heap)
            job = per_queue[cq].pop()
            options = ctx.default_options(job)
            out.append(Claim(job, options))
            if options:
                book.add(cq, *options[0])
            if per_queue[cq]:
                heapq.heappush(heap, (book.share(cq, ctx.capacity), cq))
        return out


class Tiresias(Policy):
    name = "tiresias"
    placement = "spread"

    def prepare(self, ctx: Context) -> None:
        threshold = ctx.options.las_threshold_gpu_s
        for job in ctx.state.admitted.values():
            if job.level == 0 and job.attained(ctx.now) >= threshold:
                job.level, job.level_since = 1, ctx.now

    def claims(self, ctx: Context, running: bool = True) -> list[Claim]:
        jobs = [*(ctx.state.admitted.values() if running else ()), *ctx.state.waiting.values()]
        jobs.sort(key=lambda j: (j.level, j.level_since if j.level else 0.0, j.seq))
        return [Claim(j, ctx.default_options(j), displaceable=True) for j in jobs]

    def wake_at(self, ctx: Context) -> float | None:
        threshold = ctx.options.las_threshold_gpu_s
        times = [
            j.admitted_at + (threshold - j.attained_gpu_s) / j.gpus
            for j in ctx.state.admitted.values()
            if j.level == 0 and j.gpus and j.admitted_at is not None
        ]
        return min(times) if times else None


POLICIES: dict[str, type[Policy]] = {p.name: p for p in (Fifo, Priority, Drf, Tiresias, Goodput)}


def make_policy(name: str | Policy) -> Policy:
    if isinstance(name, Policy):
        return name
    if name not in POLICIES:
        raise ConfigError(f"unknown policy {name!r}; choose one of: {', '.join(POLICIES)}")
    return POLICIES[name]()
