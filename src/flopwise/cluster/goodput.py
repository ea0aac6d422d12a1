"""The goodput policy: every round, give each job the GPU count and accelerator type that maximise the
cluster's progress, from each job's speed model (the planner for LLM jobs, on any accelerator type;
measured tables for the Pollux artifact's jobs), resizing elastic jobs when it pays for the restart.

Value of an allocation a (flavor, GPUs) to job j, with R_j its remaining work and r_j(a) its speed:
    v_j(a) = 2^priority_j / T_j(a),   T_j(a) = R_j / r_j(a) (+ the restart penalty and the work since its
                                                            last checkpoint if a is not its current
                                                            allocation)
i.e. the share of the job's remaining work done per second, counting the restart a change costs. The sum
over jobs of 1 / (time to finish) rewards finishing jobs: with linear speed-ups it is shortest remaining
time first, the average-JCT optimum; with diminishing returns GPUs go where they add most. Its only
inputs are the job's declared work (epochs, tokens, duration) and speed model; a job whose work is not
known to the policy would need an estimate instead.

Allocation is greedy by marginal value per GPU: repeatedly the move (a job from its tentative allocation
to a larger one, any flavor while it has none) with the highest (v(new) - v(old)) / (extra GPUs) that
fits the free GPUs and the job's quota, until no move adds value. The core then places the claims (whole
nodes for multi-node jobs), resizes, starts and preempts.
"""

from __future__ import annotations

import heapq

from flopwise.cluster.base import Claim, Context, Option, Policy
from flopwise.cluster.quota import QuotaBook
from flopwise.cluster.state import ADMITTED, ClusterState, JobState
from flopwise.errors import ConfigError


class Goodput(Policy):
    name = "goodput"
    placement = "pack"
    rebalances = True
    needs_progress = True

    def periodic(self, state: ClusterState) -> bool:
        # an elastic or batch-adaptive job's best allocation moves as it progresses; rigid jobs only
        # change on events (arrivals, completions)
        return any(j.spec.elastic or j.spec.adaptive_batch for j in state.active.values())

    def claims(self, ctx: Context, running: bool = True) -> list[Claim]:  # always plans every job
        speed = ctx.speed
        if speed is None:
            raise ConfigError("the goodput policy needs a speed model for its jobs (none was given)")
        penalty = ctx.options.restart_penalty_s
        keep_gain = 1.0 + ctx.options.goodput_resize_gain
        jobs = [*ctx.state.admitted.values(), *ctx.state.waiting.values()]
        jobs.sort(key=lambda j: j.seq)
        values: list[dict[Option, float]] = []
        for job in jobs:
            left = max(speed.remaining(job), 1e-9)
            weight = 2.0 ** job.spec.priority
            current = (job.flavor, job.gpus) if job.status == ADMITTED else None
            # a change restarts the job and throws away its work since the last checkpoint
            cost = penalty + job.lost_if_stopped(ctx.now, penalty)
            table: dict[Option, float] = {}
            for flavor in job.allowed:
                for gpus in ctx.sizes(job, flavor):
                    rate = speed.rate(job, flavor, gpus)
                    if rate <= 0:
                        continue
                    if (flavor, gpus) == current:
                        table[(flavor, gpus)] = weight * rate / left
                    else:  # a change restarts the job; ask for a clear gain before moving a running one
                        value = weight / (left / rate + (cost if current else penalty))
                        table[(flavor, gpus)] = value / keep_gain if current else value
            values.append(table)
        target = self._allocate(ctx, jobs, values)
        keep, moved, new = [], [], []
        for job, table in zip(jobs, values, strict=True):
            want = target.get(job.name)
            if job.status == ADMITTED:
                if want is None:
                    moved.append(Claim(job, (), displaceable=True))
                elif want == (job.flavor, job.gpus):
                    keep.append(Claim(job, (want,), displaceable=True))
                else:
                    moved.append(Claim(job, (want,), displaceable=True))
            elif want is not None:
                smaller = sorted((o for o in table if o[0] == want[0] and o[1] < want[1]), key=lambda o: -o[1])
                new.append(Claim(job, (want, *smaller)))
        moved.sort(key=lambda c: -(c.options[0][1] if c.options else 0))
        new.sort(key=lambda c: -c.options[0][1])
        return keep + moved + new

    def _allocate(self, ctx: Context, jobs: list[JobState], values: list[dict[Option, float]]) -> dict[str, Option]:
        free = dict(ctx.capacity)
        book = QuotaBook(ctx.cluster)
        have: list[Option | None] = [None] * len(jobs)

        def best_move(i: int):
            job, table, cur = jobs[i], values[i], have[i]
            base_value = table.get(cur, 0.0) if cur else 0.0
            base_gpus = cur[1] if cur else 0
            best = None
            for (flavor, gpus), value in table.items():
                if cur is not None and (flavor != cur[0] or gpus <= base_gpus):
                    continue
                extra = gpus - base_gpus
                if extra > free.get(flavor, 0) or not book.fits(job.cq, flavor, extra):
                    continue
                gain = (value - base_value) / extra
                if gain <= 0:
                    continue
                # equal value on several types (a job without a speed model): the type with most GPUs
                # free, keeping scarce types for the jobs that gain from them
                if best is None or gain > best[0] * (1 + 1e-9) or (
                    gain >= best[0] * (1 - 1e-9) and free.get(flavor, 0) > free.get(best[1], 0)
                ):
                    best = (gain, flavor, gpus)
            return best

        heap = []
        for i in range(len(jobs)):
            move = best_move(i)
            if move:
                heap.append((-move[0], jobs[i].seq, i, move))
        heapq.heapify(heap)
        while heap:
            _, _, i, (gain, flavor, gpus) = heapq.heappop(heap)
            cur = have[i]
            extra = gpus - (cur[1] if cur else 0)
            if extra > free.get(flavor, 0) or not book.fits(jobs[i].cq, flavor, extra):
                move = best_move(i)  # the GPUs went to others meanwhile: this job's next best
                if move:
                    heapq.heappush(heap, (-move[0], jobs[i].seq, i, move))
                continue
            free[flavor] -= extra
            book.add(jobs[i].cq, flavor, extra)
            have[i] = (flavor, gpus)
            move = best_move(i)
            if move:
                heapq.heappush(heap, (-move[0], jobs[i].seq, i, move))
        return {jobs[i].name: a for i, a in enumerate(have) if a is not None}
