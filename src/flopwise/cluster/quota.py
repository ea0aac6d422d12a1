"""Quota arithmetic of ClusterQueues and cohorts (Kueue semantics, KEP-1224 lending limits).

For each queue q and flavor f: `guaranteed` = nominal - lendable is q's alone; the cohort's shared pool is
the sum of its queues' lendable quota. A queue's use beyond its guaranteed part draws on the pool, so a
request of n GPUs fits when
    use_q + n <= nominal_q                       (within nominal quota), or, when borrowing is allowed,
    use_q + n <= nominal_q + borrowing_limit_q   (the queue's own cap), and
    pool use of the cohort after the request <= pool capacity.
Queues without a cohort neither lend nor borrow.
"""

from __future__ import annotations

import math

from flopwise.cluster.spec import ClusterQueue, ClusterSpec


class _Rules:
    """Per (queue, flavor): nominal quota, guaranteed part, cap with borrowing, cohort; per (cohort, flavor)
    the pool capacity. Computed once per cluster spec."""

    def __init__(self, cluster: ClusterSpec) -> None:
        self.cluster = cluster  # keeps the id below valid
        self.queues: dict[str, ClusterQueue] = cluster.cluster_queues
        self.limits: dict[tuple[str, str], tuple[float, float, float, str | None]] = {}
        self.pool_cap: dict[tuple[str, str], float] = {}
        for cq in self.queues.values():
            for f in cluster.flavors:
                nominal = cq.nominal(f)
                guaranteed = nominal - cq.lendable(f)
                self.limits[(cq.name, f)] = (nominal, guaranteed, nominal + cq.borrow_cap(f), cq.cohort)
                if cq.cohort is not None:
                    self.pool_cap[(cq.cohort, f)] = self.pool_cap.get((cq.cohort, f), 0) + cq.lendable(f)

    def limit(self, queue: str, flavor: str) -> tuple[float, float, float, str | None]:
        hit = self.limits.get((queue, flavor))
        if hit is None:  # a flavor the spec does not know (a node added later): no quota for it
            cq = self.queues[queue]
            nominal = cq.nominal(flavor)
            hit = self.limits[(queue, flavor)] = (nominal, nominal, nominal, None)
        return hit


_RULES: dict[int, _Rules] = {}


def _rules(cluster: ClusterSpec) -> _Rules:
    rules = _RULES.get(id(cluster))
    if rules is None or rules.cluster is not cluster:
        if len(_RULES) > 64:
            _RULES.clear()
        rules = _RULES[id(cluster)] = _Rules(cluster)
    return rules


class QuotaBook:
    """Quota use by (queue, flavor) during one scheduling step; `fits` and `add` keep pool use current."""

    def __init__(self, cluster: ClusterSpec, usage: dict[tuple[str, str], int] | None = None) -> None:
        self.rules = _rules(cluster)
        self.queues = self.rules.queues
        self.pool_cap = self.rules.pool_cap
        self.use: dict[tuple[str, str], int] = {k: v for k, v in (usage or {}).items() if v}
        self.pool_use: dict[tuple[str, str], float] = {}
        for (queue, flavor), used in self.use.items():
            _, guaranteed, _, cohort = self.rules.limit(queue, flavor)
            if cohort is not None and used > guaranteed:
                self.pool_use[(cohort, flavor)] = self.pool_use.get((cohort, flavor), 0) + used - guaranteed

    def fits(self, queue: str, flavor: str, gpus: int, borrow: bool = True) -> bool:
        nominal, guaranteed, cap, cohort = self.rules.limit(queue, flavor)
        use = self.use.get((queue, flavor), 0)
        new = use + gpus
        if new > nominal and (not borrow or new > cap):
            return False
        if cohort is not None and new > guaranteed:
            delta = new - guaranteed - max(0, use - guaranteed)
            if self.pool_use.get((cohort, flavor), 0) + delta > self.pool_cap.get((cohort, flavor), 0):
                return False
        return True

    def add(self, queue: str, flavor: str, gpus: int) -> None:
        _, guaranteed, _, cohort = self.rules.limit(queue, flavor)
        use = self.use.get((queue, flavor), 0)
        new = use + gpus
        if cohort is not None:
            delta = max(0, new - guaranteed) - max(0, use - guaranteed)
            if delta:
                self.pool_use[(cohort, flavor)] = self.pool_use.get((cohort, flavor), 0) + delta
        self.use[(queue, flavor)] = new

    def within_limits(self) -> bool:
        """Every queue within its cap and every cohort pool within its capacity (after bulk `add`s)."""
        for (queue, flavor), used in self.use.items():
            if used > self.rules.limit(queue, flavor)[2]:
                return False
        return all(used <= self.pool_cap.get(key, 0) for key, used in self.pool_use.items())

    def borrowing(self, queue: str, flavor: str) -> bool:
        return self.use.get((queue, flavor), 0) > self.rules.limit(queue, flavor)[0]

    def max_admissible(self, queue: str, flavor: str) -> float:
        """The most GPUs of `flavor` the queue could ever hold (an empty cohort lending it everything)."""
        nominal, guaranteed, cap, cohort = self.rules.limit(queue, flavor)
        if cohort is None:
            return float(nominal)
        return min(cap, guaranteed + self.pool_cap.get((cohort, flavor), 0))

    def share(self, queue: str, capacity: dict[str, int]) -> float:
        """Weighted dominant share: max over flavors of use / capacity, divided by the queue's weight (DRF)."""
        cq = self.queues[queue]
        best = 0.0
        for f, cap in capacity.items():
            if cap > 0:
                best = max(best, self.use.get((queue, f), 0) / cap)
        return best / cq.weight if cq.weight > 0 else math.inf
