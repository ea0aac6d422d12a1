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


class QuotaBook:
    """Quota use by (queue, flavor) during one scheduling step; `fits` and `add` keep pool use current."""

    def __init__(self, cluster: ClusterSpec, usage: dict[tuple[str, str], int] | None = None) -> None:
        self.queues: dict[str, ClusterQueue] = cluster.cluster_queues
        self.flavors = list(cluster.flavors)
        self.use: dict[tuple[str, str], int] = {k: v for k, v in (usage or {}).items() if v}
        self.pool_cap: dict[tuple[str, str], int] = {}
        self.pool_use: dict[tuple[str, str], int] = {}
        for cq in self.queues.values():
            if cq.cohort is None:
                continue
            for f in self.flavors:
                key = (cq.cohort, f)
                self.pool_cap[key] = self.pool_cap.get(key, 0) + cq.lendable(f)
                self.pool_use[key] = self.pool_use.get(key, 0) + self._over(cq, f, self.use.get((cq.name, f), 0))

    @staticmethod
    def _over(cq: ClusterQueue, flavor: str, use: int) -> int:
        """How much of `use` draws on the cohort's shared pool."""
        return max(0, use - (cq.nominal(flavor) - cq.lendable(flavor)))

    def fits(self, queue: str, flavor: str, gpus: int, borrow: bool = True) -> bool:
        cq = self.queues[queue]
        use = self.use.get((queue, flavor), 0)
        new = use + gpus
        nominal = cq.nominal(flavor)
        if new > nominal and (not borrow or new > nominal + cq.borrow_cap(flavor)):
            return False
        if cq.cohort is not None:
            key = (cq.cohort, flavor)
            delta = self._over(cq, flavor, new) - self._over(cq, flavor, use)
            if self.pool_use.get(key, 0) + delta > self.pool_cap.get(key, 0):
                return False
        return True

    def add(self, queue: str, flavor: str, gpus: int) -> None:
        cq = self.queues[queue]
        use = self.use.get((queue, flavor), 0)
        if cq.cohort is not None:
            key = (cq.cohort, flavor)
            delta = self._over(cq, flavor, use + gpus) - self._over(cq, flavor, use)
            self.pool_use[key] = self.pool_use.get(key, 0) + delta
        self.use[(queue, flavor)] = use + gpus

    def borrowing(self, queue: str, flavor: str) -> bool:
        return self.use.get((queue, flavor), 0) > self.queues[queue].nominal(flavor)

    def max_admissible(self, queue: str, flavor: str) -> float:
        """The most GPUs of `flavor` the queue could ever hold (an empty cohort lending it everything)."""
        cq = self.queues[queue]
        nominal = cq.nominal(flavor)
        if cq.cohort is None:
            return float(nominal)
        guaranteed = nominal - cq.lendable(flavor)
        return min(nominal + cq.borrow_cap(flavor), guaranteed + self.pool_cap.get((cq.cohort, flavor), 0))

    def share(self, queue: str, capacity: dict[str, int]) -> float:
        """Weighted dominant share: max over flavors of use / capacity, divided by the queue's weight (DRF)."""
        cq = self.queues[queue]
        best = 0.0
        for f, cap in capacity.items():
            if cap > 0:
                best = max(best, self.use.get((queue, f), 0) / cap)
        return best / cq.weight if cq.weight > 0 else math.inf
