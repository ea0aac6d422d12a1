"""The scheduler core: state + events in, decisions out. Pure and deterministic (no I/O, no clock, no
threads, no randomness): the simulator and the live service call this same code.

    sched = Scheduler(cluster, policy="fifo")          # configuration only; it keeps no state of its own
    state = sched.new_state()                          # or ClusterState.from_dict(saved)
    result = sched.step(state, now, [Submit(spec), Finish("job-1"), ...])
    for decision in result.decisions: ...              # Start / Resize / Preempt / Stop / Requeue / GiveUp / Reject
    # call step again when an event arrives, or at result.wake_at (backoff expiry, a policy's own timer)
    saved = state.to_dict()                            # plain JSON-able dict; the whole memory of the scheduler

`step` mutates `state` in place (the caller owns it) and returns what to do. Times are seconds on the
caller's clock; `now` must not go backwards. Unknown job or node names in events are ignored (a live
service may race a cancel with a finish); impossible jobs are rejected with a reason, never raised.

One scheduling pass, the same for every policy (policies only order the claims, see base.py):
1. Selection by counts: pinned jobs (running, not preemptible) first; then the claims in order, running
   jobs the policy will not displace ahead of the rest, each taking its first option that fits its
   queue's nominal quota and the flavor's free capacity; then a second walk lets the rest borrow from the
   cohort. Quota a queue lent is thus reclaimed: its own jobs are served before borrowers.
2. Placement in selection order: running jobs whose allocation changed are resized (shrinks first); new
   jobs are placed on the free GPUs plus those of the displaced running jobs (the Pollux artifact frees
   them all first); a displaced job is preempted when a placement touches its GPUs (lowest ranked
   first), with the work lost since its last checkpoint accounted, and keeps running otherwise.
3. Backfill: queued jobs that were not selected start if their quota and a placement on free GPUs allow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from flopwise.cluster.base import Claim, Context, Policy, SchedulerOptions, SpeedModel
from flopwise.cluster.events import (
    Cancel,
    Checkpoint,
    Decision,
    Event,
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
)
from flopwise.cluster.placement import STRATEGIES, Topology, place
from flopwise.cluster.policies import make_policy
from flopwise.cluster.quota import QuotaBook
from flopwise.cluster.spec import ClusterSpec, JobSpec, NodeSpec
from flopwise.cluster.state import (
    ADMITTED,
    CANCELLED,
    FAILED,
    QUEUED,
    REJECTED,
    SUCCEEDED,
    ClusterState,
    JobState,
)
from flopwise.errors import ConfigError, FlopwiseError

log = logging.getLogger(__name__)


class SchedulerError(FlopwiseError):
    """The caller broke the core's contract (e.g. time went backwards)."""


class Scheduler:
    def __init__(
        self,
        cluster: ClusterSpec,
        policy: str | Policy = "fifo",
        speed: SpeedModel | None = None,
        options: SchedulerOptions | None = None,
        placement: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.policy = make_policy(policy)
        if placement is not None:  # override the policy's placement strategy
            if placement not in STRATEGIES:
                raise ConfigError(f"placement {placement!r}: must be one of {', '.join(STRATEGIES)}")
            self.policy.placement = placement
        self.speed = speed
        self.options = options or SchedulerOptions()
        self._topo_key: tuple | None = None
        self._topo = Topology(cluster.nodes)
        self._cap_key: tuple | None = None
        self._cap: dict[str, int] = {}
        # optional: the nodes a job would rather run on (e.g. the live service's nodes that already hold the job's
        # dataset); placement tries them first
        self.locality: Callable[[JobState], Iterable[str]] | None = None

    def _prefer(self, job: JobState) -> Iterable[str]:
        return self.locality(job) if self.locality is not None else ()

    def new_state(self) -> ClusterState:
        state = ClusterState()
        state.reindex()
        return state

    # -- the step ----------------------------------------------------------------------------------------
    def step(self, state: ClusterState, now: float, events: Iterable[Event] = ()) -> StepResult:
        if now < state.now - 1e-9:
            raise SchedulerError(f"time went backwards: step at {now} after {state.now}")
        state.now = now
        topo = self._topology(state)
        out: list[Decision] = []
        changed = False
        for event in events:
            changed |= self._apply(state, topo, event, now, out)
        topo = self._topology(state)
        for job in [j for j in state.sleeping.values() if j.backoff_until <= now]:
            state.requeue(job)
        capacity = self._capacity(topo, state)
        ctx = Context(self.cluster, state, now, topo, self.options, self.speed, capacity)
        self.policy.prepare(ctx)
        if state.waiting or (self.policy.rebalances and (changed or state.active)):
            self._schedule(ctx, out)
        wake = [j.backoff_until for j in state.sleeping.values()]
        policy_wake = self.policy.wake_at(ctx)
        if policy_wake is not None:
            wake.append(max(policy_wake, now))
        return StepResult(out, min(wake) if wake else None)

    def _capacity(self, topo: Topology, state: ClusterState) -> dict[str, int]:
        """GPUs of the nodes that are up, per flavor (cached until a node goes down or up)."""
        key = (self._topo_key, frozenset(state.down))
        if key != self._cap_key:
            self._cap_key = key
            self._cap = {f: 0 for f in self.cluster.flavors}
            for name, node in topo.nodes.items():
                if name not in state.down:
                    self._cap[node.flavor] = self._cap.get(node.flavor, 0) + node.gpus
        return dict(self._cap)

    def _topology(self, state: ClusterState) -> Topology:
        key = tuple(n.name for n in state.added)
        if key != self._topo_key:
            self._topo_key = key
            self._topo = Topology([*self.cluster.nodes, *state.added])
        return self._topo

    # -- events ------------------------------------------------------------------------------------------
    def _apply(self, state: ClusterState, topo: Topology, event: Event, now: float, out: list[Decision]) -> bool:
        """Apply one event; True when capacity was freed or changed (worth a scheduling pass)."""
        if isinstance(event, Submit):
            self._submit(state, topo, event.spec, now, out)
            return False
        if isinstance(event, NodeDown):
            if event.node not in topo.nodes or event.node in state.down:
                return False
            state.down.add(event.node)
            for job in list(state.admitted.values()):
                if any(n == event.node for n, _ in job.placement):
                    self._preempt(state, job, now, f"node {event.node} down", out, crash=True)
            return True
        if isinstance(event, NodeUp):
            node = event.node
            if isinstance(node, NodeSpec):
                if node.flavor not in self.cluster.flavors:
                    log.warning("node %s: unknown flavor %s ignored", node.name, node.flavor)
                    return False
                if node.name not in topo.nodes:
                    state.added.append(node)
                name = node.name
            else:
                name = node
            if name in state.down:
                state.down.discard(name)
            return True
        job = state.jobs.get(event.job)
        if job is None or job.name not in state.active:
            log.debug("event for unknown or finished job %s ignored", event.job)
            return False
        if isinstance(event, Finish):
            state.end(job, SUCCEEDED, now, "finished")
            return True
        if isinstance(event, Fail):
            if job.status != ADMITTED:  # it was stopped meanwhile (preempted, resized): nothing ran to fail
                return False
            self._fail(state, job, now, event.reason, out)
            return True
        if isinstance(event, Cancel):
            if job.status == ADMITTED:
                out.append(Stop(job.name, "cancelled"))
            state.end(job, CANCELLED, now, "cancelled")
            return True
        if isinstance(event, Progress):
            job.progress = float(event.progress)
        elif isinstance(event, Checkpoint):
            job.checkpoint_at = now
        return False

    def _submit(self, state: ClusterState, topo: Topology, spec: JobSpec, now: float, out: list[Decision]) -> None:
        old = state.jobs.get(spec.name)
        if old is not None:
            if old.spec != spec:  # the same job twice is one job; a different one under its name is refused
                out.append(Reject(spec.name, f"a different job named {spec.name!r} was already submitted"))
            return
        job = JobState(spec, state.seq, submitted_at=now)
        state.seq += 1
        reason = self._admissible(job, topo)
        state.jobs[spec.name] = job
        if reason:
            job.status, job.ended_at, job.reason = REJECTED, now, reason
            out.append(Reject(spec.name, reason))
            return
        state.add(job)

    def _admissible(self, job: JobState, topo: Topology) -> str | None:
        """Why the job can never run here (and sets job.cq and job.allowed), or None."""
        spec, cluster = job.spec, self.cluster
        cq = cluster.queue_of(spec.queue)
        if cq is None:
            return f"unknown queue {spec.queue!r}; queues: {', '.join(cluster.local_queues)}"
        job.cq = cq.name
        flavors = [f for f in (spec.flavors or topo.by_flavor) if f in topo.by_flavor]
        if not flavors:
            return f"no node has an allowed flavor ({', '.join(spec.flavors)}); flavors here: {', '.join(topo.by_flavor)}"
        book = QuotaBook(cluster)
        allowed, reasons = [], []
        for f in flavors:
            largest = topo.largest(f, spec.topology)
            if spec.min_gpus > largest:
                node = "one NVLink domain" if topo.domain_max[f] > topo.node_max[f] else "one node"
                where = {"node": node, "rack": "one rack"}.get(spec.topology, "the cluster")
                reasons.append(f"{spec.min_gpus} GPUs > {largest} {f} GPUs in {where}")
                continue
            quota = book.max_admissible(cq.name, f)
            if spec.min_gpus > quota:
                reasons.append(f"queue {cq.name} can hold at most {quota:g} {f} GPUs, the job needs {spec.min_gpus}")
                continue
            why = self.speed.infeasible(spec, f, spec.min_gpus) if self.speed is not None else None
            if why:
                reasons.append(why)
                continue
            allowed.append(f)
        if not allowed:
            return "; ".join(reasons)
        job.allowed = tuple(allowed)
        return None

    def _lost_s(self, job: JobState, now: float, crash: bool) -> float:
        return job.lost_if_stopped(now, self.options.restart_penalty_s, crash)

    def _preempt(self, state: ClusterState, job: JobState, now: float, reason: str, out: list[Decision],
                 crash: bool = False) -> None:
        lost = self._lost_s(job, now, crash)
        lost_gpu = lost * job.gpus
        job.lost_gpu_s += lost_gpu
        job.preemptions += 1
        job.reason = reason
        state.release(job, now)
        out.append(Preempt(job.name, reason, lost, lost_gpu))

    def _fail(self, state: ClusterState, job: JobState, now: float, reason: str, out: list[Decision]) -> None:
        job.lost_gpu_s += self._lost_s(job, now, crash=True) * job.gpus
        state.release(job, now)
        job.restarts += 1
        if job.restarts > job.spec.max_restarts:
            why = f"{reason}; gave up after {job.spec.max_restarts} restarts"
            state.end(job, FAILED, now, why)
            out.append(GiveUp(job.name, why))
            return
        opts = self.options
        delay = min(opts.backoff_max_s, opts.backoff_base_s * 2 ** (job.restarts - 1))
        state.backoff(job, now + delay)
        job.reason = f"{reason}; restart {job.restarts} of {job.spec.max_restarts} after {delay:g} s"
        out.append(Requeue(job.name, now + delay, job.restarts))

    # -- the scheduling pass -----------------------------------------------------------------------------
    def _schedule(self, ctx: Context, out: list[Decision]) -> None:
        state, now, topo = ctx.state, ctx.now, ctx.topo
        lists_running = self.policy.rebalances or (self.policy.preemptive and self._contended(ctx))
        claims = self.policy.claims(ctx, running=lists_running)
        movable = {c.job.name for c in claims if c.running and c.displaceable and c.job.spec.preemptible}
        if not movable and not self._reclaim_possible(state):  # nothing can be displaced: first fit in order
            free = {n: node.gpus - state.used.get(n, 0) for n, node in topo.nodes.items() if n not in state.down}
            self._serve_in_order(ctx, claims, free, set(), self.policy.placement, out)
            return
        chosen, order, walk, ranked = self._select(ctx, claims, movable)
        free = {n: node.gpus - state.used.get(n, 0) for n, node in topo.nodes.items() if n not in state.down}
        owner: dict[str, list[JobState]] = {}  # node -> displaced jobs on it, lowest ranked first
        displaced = [c.job for c in walk if c.running and c.job.name not in chosen]
        if displaced:
            seen = {j.name for j in ranked}
            ranked += [c.job for c in claims if c.job.name not in seen]
            rank = {job.name: i for i, job in enumerate(ranked)}
            for job in sorted(displaced, key=lambda j: -rank[j.name]):
                for node, _ in job.placement:
                    owner.setdefault(node, []).append(job)
        strategy = self.policy.placement
        options = {c.job.name: c.options for c in order}

        def victims_for(job: JobState, flavor: str, gpus: int):
            """A placement on free GPUs plus those of displaced jobs, and the displaced jobs it touches."""
            avail = dict(free)
            for node, jobs in owner.items():
                for other in jobs:
                    avail[node] = avail.get(node, 0) + dict(other.placement)[node]
            placement = self._place(topo, avail, job, flavor, gpus, strategy)
            if placement is None:
                return None, []
            hit: list[JobState] = []
            for node, k in placement:
                short = k - free.get(node, 0) - sum(dict(v.placement).get(node, 0) for v in hit)
                for other in owner.get(node, []):
                    if short <= 0:
                        break
                    if other not in hit:
                        hit.append(other)
                        short -= dict(other.placement)[node]
            return placement, hit

        def apply_placement(job: JobState, flavor: str, placement) -> None:
            for node, k in placement:
                free[node] -= k
            state.allocate(job, flavor, placement, now)

        # shrinking resizes first: they free GPUs for the rest
        resized = [c for c in order if c.running and chosen[c.job.name] != (c.job.flavor, c.job.gpus)]
        resized.sort(key=lambda c: chosen[c.job.name][1] - c.job.gpus)
        for claim in resized:
            self._resize(ctx, claim.job, *chosen[claim.job.name], free, strategy, out)
        for claim in order:
            job = claim.job
            if job.status == ADMITTED:
                continue
            flavor, gpus = chosen[job.name]
            tried = [(flavor, gpus)] + [o for o in options[job.name] if o[1] < gpus]
            placed = False
            for f, n in tried:
                # displaced jobs lose their GPUs (they are counted out), so place on free + theirs; one
                # whose GPUs no placement touches keeps running
                hit: list[JobState] = []
                if any(owner.values()):
                    placement, hit = victims_for(job, f, n)
                else:
                    placement = self._place(topo, free, job, f, n, strategy)
                if placement is None:
                    continue
                for other in hit:
                    why = (
                        f"quota reclaimed by queue {job.cq} for {job.name}"
                        if other.cq != job.cq
                        else f"preempted for {job.name} ({self.policy.name})"
                    )
                    for node, k in other.placement:
                        free[node] += k
                    for lst in owner.values():
                        if other in lst:
                            lst.remove(other)
                    self._preempt(state, other, now, why, out)
                resume = job.first_admitted_at is not None
                apply_placement(job, f, placement)
                job.reason = ""
                out.append(Start(job.name, f, placement, job.gpus, resume))
                placed = True
                break
            if not placed:
                job.reason = f"waiting: no placement for {gpus} {flavor} GPUs ({job.spec.topology})"

        # backfill what selection left out, on free GPUs only
        if state.waiting:
            self._serve_in_order(ctx, claims, free, set(chosen), strategy, out)

    def _select(self, ctx: Context, claims: list[Claim], movable: set[str]):
        """Step 1: which claims get which option, by counts and quota; returns (chosen, order, walk,
        ranked): the choice per job, the claims in selection order, the claims walked, the keepers ranked
        ahead of the policy's claims (when reclaim is possible)."""
        state = ctx.state
        book = QuotaBook(self.cluster)
        count = dict(ctx.capacity)
        chosen: dict[str, tuple[str, int]] = {}
        order: list[Claim] = []

        def take(claim: Claim, borrow: bool) -> None:
            job = claim.job
            for flavor, gpus in claim.options:
                if count.get(flavor, 0) >= gpus and book.fits(job.cq, flavor, gpus, borrow):
                    book.add(job.cq, flavor, gpus)
                    count[flavor] -= gpus
                    chosen[job.name] = (flavor, gpus)
                    order.append(claim)
                    return

        # Running jobs the policy does not list as displaceable keep their place. When no reclaim can
        # happen (no queue of a cohort borrows while a job of that cohort waits) they are counted in bulk;
        # otherwise one by one ahead of the rest, so a borrower among them can lose to a lender's job.
        walk: list[Claim] = []
        ranked: list[JobState] = []
        if self._reclaim_possible(state):
            keepers = sorted((j for j in state.admitted.values() if j.name not in movable), key=lambda j: j.seq)
            for job in keepers:
                if job.spec.preemptible:
                    walk.append(Claim(job, ((job.flavor or "", job.gpus),)))
                else:  # pinned: counted whatever the quota says
                    book.add(job.cq, job.flavor or "", job.gpus)
                    count[job.flavor or ""] = count.get(job.flavor or "", 0) - job.gpus
                    chosen[job.name] = (job.flavor or "", job.gpus)
            ranked = [c.job for c in walk]
        else:
            usage = dict(state.usage)
            for name in movable:
                job = state.admitted[name]
                usage[(job.cq, job.flavor or "")] -= job.gpus
            book = QuotaBook(self.cluster, usage)
            for (_, flavor), gpus in usage.items():
                count[flavor] = count.get(flavor, 0) - gpus
        walk += [c for c in claims if not c.running or c.job.name in movable]
        if not self._everything_fits(walk, book, count, chosen, order):
            for claim in walk:  # nominal quota first ...
                take(claim, borrow=False)
            for claim in walk:  # ... then borrowing from the cohort
                if claim.job.name not in chosen:
                    take(claim, borrow=True)

        return chosen, order, walk, ranked

    def _place(self, topo: Topology, free: dict[str, int], job: JobState, flavor: str, gpus: int, strategy: str,
               prefer: Iterable[str] | None = None):
        """A placement the job can run on, or None: the speed model may refuse a shape it finds no layout for."""
        prefer = self._prefer(job) if prefer is None else prefer
        placement = place(topo, free, flavor, gpus, job.spec.topology, strategy, prefer=prefer)
        if placement is not None and self.speed is not None:
            if not self.speed.runs_on(job, flavor, tuple(k for _, k in placement)):
                return None
        return placement

    def _serve_in_order(self, ctx: Context, claims: list[Claim], free: dict[str, int], skip: set[str], strategy: str,
                        out: list[Decision]) -> None:
        """Start queued claims in order wherever their quota and a placement on free GPUs allow (first
        fit in order: a later job that fits runs ahead of an earlier one that does not)."""
        state, topo = ctx.state, ctx.topo
        book = QuotaBook(self.cluster, state.usage)
        free_total: dict[str, int] = {}
        for node, k in free.items():
            flavor = topo.nodes[node].flavor
            free_total[flavor] = free_total.get(flavor, 0) + k
        left = sum(free_total.values())
        for claim in claims:
            job = claim.job
            if job.status != QUEUED or job.name in skip:
                continue
            if left <= 0:  # a full cluster: the rest wait
                job.reason = job.reason if job.reason.startswith("waiting") else "waiting: capacity"
                continue
            for flavor, gpus in claim.options:
                if free_total.get(flavor, 0) < gpus or not book.fits(job.cq, flavor, gpus, True):
                    continue
                placement = self._place(topo, free, job, flavor, gpus, strategy)
                if placement is None:
                    continue
                book.add(job.cq, flavor, gpus)
                free_total[flavor] -= gpus
                left -= gpus
                for node, k in placement:
                    free[node] -= k
                resume = job.first_admitted_at is not None
                state.allocate(job, flavor, placement, ctx.now)
                job.reason = ""
                out.append(Start(job.name, flavor, placement, job.gpus, resume))
                break
            else:
                if not job.reason.startswith("waiting"):
                    job.reason = "waiting: quota or capacity"

    def _contended(self, ctx: Context) -> bool:
        """Whether the queued jobs' first choices do not all fit beside the running jobs (counts, quota):
        only then can a policy's order displace a running job."""
        state = ctx.state
        book = QuotaBook(self.cluster, state.usage)
        left = dict(ctx.capacity)
        for (_, flavor), gpus in state.usage.items():
            left[flavor] = left.get(flavor, 0) - gpus
        for job in state.waiting.values():
            options = ctx.default_options(job)
            if not options:
                return True
            flavor, gpus = options[0]
            left[flavor] = left.get(flavor, 0) - gpus
            if left[flavor] < 0:
                return True
            book.add(job.cq, flavor, gpus)
        return not book.within_limits()

    @staticmethod
    def _everything_fits(walk: list[Claim], book: QuotaBook, count: dict[str, int], chosen: dict, order: list) -> bool:
        """When every claim's first option fits together (counts and quota), that is the selection: the
        walk would take the same (the common case of a cluster with room), at a fraction of the cost."""
        trial = QuotaBook.__new__(QuotaBook)
        trial.rules, trial.queues, trial.pool_cap = book.rules, book.queues, book.pool_cap
        trial.use, trial.pool_use = dict(book.use), dict(book.pool_use)
        left = dict(count)
        for claim in walk:
            if not claim.options:
                return False
            flavor, gpus = claim.options[0]
            left[flavor] = left.get(flavor, 0) - gpus
            trial.add(claim.job.cq, flavor, gpus)
        if any(v < 0 for v in left.values()) or not trial.within_limits():
            return False
        for claim in walk:
            chosen[claim.job.name] = claim.options[0]
            order.append(claim)
        book.use, book.pool_use = trial.use, trial.pool_use
        count.update(left)
        return True

    def _reclaim_possible(self, state: ClusterState) -> bool:
        """A queue of some cohort uses more than its nominal quota while a job of that cohort waits."""
        queues = self.cluster.cluster_queues
        borrowing = {
            queues[q].cohort for (q, f), used in state.usage.items() if used > queues[q].nominal(f) and queues[q].cohort
        }
        return bool(borrowing) and any(queues[j.cq].cohort in borrowing for j in state.waiting.values())

    def _resize(self, ctx: Context, job: JobState, flavor: str, gpus: int, free: dict[str, int], strategy: str,
                out: list[Decision]) -> None:
        """Move a running job to a new allocation (restart from a checkpoint); keep it as is if none fits."""
        own = dict(job.placement)
        for node, k in own.items():
            free[node] += k
        placement = self._place(ctx.topo, free, job, flavor, gpus, self.policy.placement, prefer=own)
        if placement is None:
            for node, k in own.items():
                free[node] -= k
            return
        state, now = ctx.state, ctx.now
        lost = self._lost_s(job, now, crash=False)
        job.lost_gpu_s += lost * job.gpus
        before = job.gpus
        state.release(job, now)
        for node, k in placement:
            free[node] -= k
        state.allocate(job, flavor, placement, now)
        job.resizes += 1
        out.append(Resize(job.name, flavor, placement, gpus, before))
