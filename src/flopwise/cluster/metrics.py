"""What a simulation reports: job completion time (JCT) average, p50 and p99, queueing delay, makespan,
GPU utilisation over time, GPU-hours per queue, finish-time fairness, preemptions, restarts, rejections.

Finish-time fairness (Themis, Mahajan et al. NSDI'20): rho = JCT / T_fair, where T_fair is the job's run
time alone at its requested GPUs, stretched when its fair share of the cluster (capacity / number of
jobs active during its life) is smaller than its request: T_fair = T_alone * max(1, n_active * gpus / C).
rho <= 1 means the job did at least as well as with an equal share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from flopwise.cluster.events import GiveUp, Preempt, Reject, Requeue, Resize, Start, Stop
from flopwise.cluster.jobmodels import JobModels
from flopwise.cluster.spec import ClusterSpec, JobSpec
from flopwise.cluster.state import ClusterState


@dataclass
class SimResult:
    summary: dict
    jobs: list[dict] = field(default_factory=list)
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # (time, GPUs allocated, jobs active)

    def to_dict(self, per_job: bool = False, timeline_points: int = 500) -> dict:
        out = dict(self.summary)
        step = max(1, len(self.timeline) // timeline_points)
        cap = self.summary["capacity_gpus"] or 1
        out["utilisation_timeline"] = [[t, used / cap] for t, used, _ in self.timeline[::step]]
        if per_job:
            out["per_job"] = self.jobs
        return out


class Recorder:
    def __init__(self, cluster: ClusterSpec, models: JobModels, jobs: list[JobSpec], interval: float) -> None:
        self.cluster, self.models = cluster, models
        self.capacity = cluster.total_gpus
        self.jobs = {s.name: {"name": s.name, "queue": s.queue, "gpus": s.gpus, "submit_s": s.submit_time} for s in jobs}
        self.specs = {s.name: s for s in jobs}
        self.timeline: list[tuple[float, int, int]] = []
        self.preemptions = self.resizes = self.restarts = 0
        self.lost_gpu_s = 0.0

    def started(self, d: Start | Resize, t: float) -> None:
        rec = self.jobs[d.job]
        rec.setdefault("start_s", t)
        rec["flavor"], rec["last_gpus"] = d.flavor, d.gpus
        if isinstance(d, Resize):
            self.resizes += 1

    def stopped(self, d: Preempt | Stop, t: float) -> None:
        if isinstance(d, Preempt):
            self.preemptions += 1
            self.lost_gpu_s += d.lost_gpu_s

    def finished(self, name: str, at: float | None) -> None:
        self.jobs[name]["finish_s"] = at
        self.jobs[name]["status"] = "succeeded"

    def ended(self, d: Reject | GiveUp, t: float) -> None:
        rec = self.jobs.setdefault(d.job, {"name": d.job})
        rec["status"] = "rejected" if isinstance(d, Reject) else "failed"
        rec["reason"] = d.reason

    def requeued(self, d: Requeue) -> None:
        self.restarts += 1

    def round(self, t: float, state: ClusterState) -> None:
        used = sum(state.used.values())
        active = len(state.active)
        if self.timeline and self.timeline[-1][1:] == (used, active):
            return  # nothing changed: the step function keeps its value
        self.timeline.append((t, used, active))

    def result(self, state: ClusterState, config, workload, t_end: float) -> SimResult:
        per_queue: dict[str, float] = {}
        for job in state.jobs.values():
            per_queue[job.cq or job.spec.queue] = per_queue.get(job.cq or job.spec.queue, 0.0) + job.attained_gpu_s / 3600
            rec = self.jobs.get(job.name)
            if rec is not None:
                rec.update(preemptions=job.preemptions, restarts=job.restarts, resizes=job.resizes,
                           gpu_hours=job.attained_gpu_s / 3600, lost_gpu_hours=job.lost_gpu_s / 3600)
                rec.setdefault("status", job.status)
                if job.status not in ("succeeded", "rejected", "failed"):
                    rec["status"], rec["reason"] = "unfinished", job.reason
        finished = [r for r in self.jobs.values() if r.get("status") == "succeeded"]
        jct = np.array([r["finish_s"] - r["submit_s"] for r in finished], dtype=float)
        queued = np.array([r["start_s"] - r["submit_s"] for r in self.jobs.values() if "start_s" in r], dtype=float)
        for r, j in zip(finished, jct, strict=True):
            r["jct_s"] = float(j)
        first = min((s.submit_time for s in self.specs.values()), default=0.0)
        last = max((r["finish_s"] for r in finished), default=first)
        makespan = last - first
        util = self._utilisation(first, last)
        ftf = self._fairness(finished)
        counts = {s: sum(1 for r in self.jobs.values() if r.get("status") == s)
                  for s in ("succeeded", "rejected", "failed", "unfinished")}
        summary = {
            "policy": config.policy,
            "source": workload.source,
            "jobs": len(self.specs),
            "finished": counts["succeeded"],
            "rejected": counts["rejected"],
            "failed": counts["failed"],
            "unfinished": counts["unfinished"],
            "skipped_rows": len(workload.skipped),
            "avg_jct_s": float(jct.mean()) if jct.size else None,
            "p50_jct_s": float(np.percentile(jct, 50)) if jct.size else None,
            "p99_jct_s": float(np.percentile(jct, 99)) if jct.size else None,
            "avg_queue_s": float(queued.mean()) if queued.size else None,
            "p99_queue_s": float(np.percentile(queued, 99)) if queued.size else None,
            "makespan_s": makespan,
            "utilisation": util,
            "capacity_gpus": self.capacity,
            "gpu_hours_per_queue": {k: round(v, 3) for k, v in sorted(per_queue.items())},
            "finish_time_fairness": ftf,
            "preemptions": self.preemptions,
            "restarts": self.restarts,
            "resizes": self.resizes,
            "lost_gpu_hours": self.lost_gpu_s / 3600,
            "interval_s": config.interval,
            "restart_penalty_s": config.restart_penalty,
            "rejections": [{"job": r["name"], "reason": r["reason"]} for r in self.jobs.values()
                           if r.get("status") == "rejected"][:100],
            "skipped": workload.skipped[:100],
        }
        return SimResult(summary, list(self.jobs.values()), self.timeline)

    def _utilisation(self, start: float, end: float) -> float | None:
        if end <= start or not self.timeline or not self.capacity:
            return None
        times = np.array([t for t, _, _ in self.timeline] + [end])
        used = np.array([u for _, u, _ in self.timeline], dtype=float)
        spans = np.clip(np.minimum(times[1:], end) - np.maximum(times[:-1], start), 0, None)
        return float((used * spans).sum() / (self.capacity * (end - start)))

    def _fairness(self, finished: list[dict]) -> dict | None:
        if not finished or not self.timeline:
            return None
        times = np.array([t for t, _, _ in self.timeline], dtype=float)
        active = np.array([a for _, _, a in self.timeline], dtype=float)
        cum = np.concatenate([[0.0], np.cumsum(active[:-1] * np.diff(times))])

        def integral(x: float) -> float:  # of the number of active jobs from times[0] to x
            k = max(0, int(np.searchsorted(times, x, side="right")) - 1)
            return float(cum[k] + active[k] * max(0.0, x - times[k]))

        rhos = []
        for r in finished:
            alone = self.models.isolated_time(self.specs[r["name"]])
            if not math.isfinite(alone) or alone <= 0 or r["jct_s"] <= 0:
                continue
            lo, hi = r["submit_s"], r["finish_s"]
            n_active = max(1.0, (integral(hi) - integral(lo)) / (hi - lo))
            fair = alone * max(1.0, n_active * r["gpus"] / self.capacity)
            r["ftf"] = r["jct_s"] / fair
            rhos.append(r["ftf"])
        if not rhos:
            return None
        arr = np.array(rhos)
        return {"mean": float(arr.mean()), "p99": float(np.percentile(arr, 99)), "max": float(arr.max()),
                "share_at_most_1": float((arr <= 1.0).mean())}
