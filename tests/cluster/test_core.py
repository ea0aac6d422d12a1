"""The scheduler core on hand-made clusters: admission, borrowing, reclaim, gang placement, preemption with
lost work, restart with backoff, node failures, rejections, and state that survives a JSON round trip."""

from __future__ import annotations

import json

import pytest

from flopwise.cluster.base import SchedulerOptions
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
    Reject,
    Requeue,
    Start,
    Stop,
    Submit,
    decision_from_dict,
    event_from_dict,
    to_dict,
)
from flopwise.cluster.spec import ClusterQueue, ClusterSpec, Flavor, JobSpec, LocalQueue, NodeSpec
from flopwise.cluster.state import ADMITTED, BACKOFF, FAILED, QUEUED, REJECTED, ClusterState

from .conftest import two_team_cluster


def kinds(result, kind):
    return [d for d in result.decisions if isinstance(d, kind)]


def started(result) -> dict[str, int]:
    return {d.job: d.gpus for d in kinds(result, Start)}


def test_admission_stops_at_the_nominal_quota_without_a_cohort():
    sched = Scheduler(two_team_cluster(cohort=None), "fifo")
    state = sched.new_state()
    r = sched.step(state, 0, [Submit(JobSpec(f"a{i}", queue="team-a", gpus=2)) for i in range(3)])
    assert started(r) == {"a0": 2, "a1": 2}  # queue a owns 4 GPUs; 4 more are free but b's
    assert state.jobs["a2"].status == QUEUED and "quota" in state.jobs["a2"].reason
    r = sched.step(state, 10, [Finish("a0")])
    assert started(r) == {"a2": 2}


def test_borrowing_within_the_cohort_up_to_the_limits():
    sched = Scheduler(two_team_cluster(), "fifo")
    state = sched.new_state()
    r = sched.step(state, 0, [Submit(JobSpec(f"a{i}", queue="team-a", gpus=2)) for i in range(4)])
    assert set(started(r)) == {"a0", "a1", "a2", "a3"}  # b's idle quota is borrowed
    assert state.usage[("a", "gpu")] == 8
    # a borrowing limit of 2 GPUs or a lending limit of 2 on b: only one of the two extra jobs runs
    for cluster in (two_team_cluster(borrowing_limit={"gpu": 2}), two_team_cluster(lending_limit={"gpu": 2})):
        sched = Scheduler(cluster, "fifo")
        state = sched.new_state()
        r = sched.step(state, 0, [Submit(JobSpec(f"a{i}", queue="team-a", gpus=2)) for i in range(4)])
        assert set(started(r)) == {"a0", "a1", "a2"}


def test_lender_reclaims_its_quota_and_the_borrower_loses_work_since_its_checkpoint():
    sched = Scheduler(two_team_cluster(), "fifo", options=SchedulerOptions(restart_penalty_s=30))
    state = sched.new_state()
    jobs = [JobSpec(f"a{i}", queue="team-a", gpus=2, checkpoint_interval_s=100) for i in range(4)]
    sched.step(state, 0, [Submit(j) for j in jobs])
    r = sched.step(state, 1000, [Submit(JobSpec("b0", queue="team-b", gpus=2))])
    preempted = kinds(r, Preempt)
    assert [p.job for p in preempted] == ["a3"]  # the last borrower, not a job within a's own quota
    assert "quota reclaimed by queue b" in preempted[0].reason
    # work started at 30 s (after the restart); checkpoints every 100 s: 70 s of work lost, on 2 GPUs
    assert preempted[0].lost_s == pytest.approx((1000 - 30) % 100)
    assert preempted[0].lost_gpu_s == pytest.approx(2 * 70)
    assert started(r) == {"b0": 2}
    assert state.jobs["a3"].status == QUEUED and state.jobs["a3"].lost_gpu_s == pytest.approx(140)
    # a preempted job resumes from its checkpoint when GPUs come back
    r = sched.step(state, 1100, [Finish("b0")])
    assert [d.job for d in kinds(r, Start)] == ["a3"] and kinds(r, Start)[0].resume


def test_gang_placement_best_fit_whole_nodes_and_topology():
    sched = Scheduler(ClusterSpec.uniform(4, 4, rack_nodes=2), "fifo")
    state = sched.new_state()
    r = sched.step(state, 0, [Submit(JobSpec("three", gpus=3)), Submit(JobSpec("one", gpus=1))])
    place = {d.job: d.placement for d in kinds(r, Start)}
    assert place["three"][0][0] == place["one"][0][0]  # best fit: the 1-GPU job fills the 3-GPU job's node
    r = sched.step(state, 1, [Submit(JobSpec("eight", gpus=8)), Submit(JobSpec("six", gpus=6, topology="rack"))])
    place = {d.job: d.placement for d in kinds(r, Start)}
    assert sorted(g for _, g in place["eight"]) == [4, 4]  # two whole nodes, not three partial ones
    assert "six" not in place  # 4 GPUs left, and they are in one rack anyway: it waits
    r = sched.step(state, 2, [Submit(JobSpec("five", gpus=5, topology="node"))])
    assert [d.reason for d in kinds(r, Reject)] == ["5 GPUs > 4 gpu GPUs in one node"]
    assert state.jobs["five"].status == REJECTED


def test_topology_node_spans_an_nvlink_domain_of_several_nodes():
    nodes = tuple(NodeSpec(f"n{i}", "gb", 4, nvlink_domain=f"nvl-{i // 4}") for i in range(8))
    sched = Scheduler(ClusterSpec.build({"gb": Flavor("gb")}, nodes), "fifo")
    state = sched.new_state()
    r = sched.step(state, 0, [Submit(JobSpec("a", gpus=12, topology="node")), Submit(JobSpec("b", gpus=8, topology="node")),
                              Submit(JobSpec("c", gpus=20, topology="node"))])
    place = {d.job: {n for n, _ in d.placement} for d in kinds(r, Start)}
    assert place["a"] <= {"n0", "n1", "n2", "n3"} and place["b"] <= {"n4", "n5", "n6", "n7"}
    assert kinds(r, Reject)[0].reason == "20 GPUs > 16 gb GPUs in one NVLink domain"


def test_priority_preempts_lower_priority_only_and_accounts_lost_work():
    sched = Scheduler(ClusterSpec.uniform(1, 4), "priority", options=SchedulerOptions(restart_penalty_s=30))
    state = sched.new_state()
    sched.step(state, 0, [Submit(JobSpec("low", gpus=2, priority=0, checkpoint_interval_s=600)),
                          Submit(JobSpec("pinned", gpus=2, priority=0, preemptible=False))])
    r = sched.step(state, 1000, [Submit(JobSpec("same", gpus=2, priority=0))])
    assert not r.decisions  # equal priority never preempts
    r = sched.step(state, 1000, [Submit(JobSpec("high", gpus=2, priority=5))])
    (p,) = kinds(r, Preempt)
    assert p.job == "low" and p.lost_s == pytest.approx((1000 - 30) % 600) and p.lost_gpu_s == pytest.approx(2 * 370)
    assert started(r) == {"high": 2}
    assert state.jobs["pinned"].status == ADMITTED  # not preemptible
    # with on-demand checkpoints (interval 0) a preemption loses nothing
    sched2 = Scheduler(ClusterSpec.uniform(1, 2), "priority")
    st2 = sched2.new_state()
    sched2.step(st2, 0, [Submit(JobSpec("low", gpus=2))])
    (p,) = kinds(sched2.step(st2, 500, [Submit(JobSpec("high", gpus=2, priority=1))]), Preempt)
    assert p.lost_s == 0


def test_failure_restarts_with_backoff_then_gives_up():
    opts = SchedulerOptions(backoff_base_s=10, backoff_max_s=15)
    sched = Scheduler(ClusterSpec.uniform(1, 4), "fifo", options=opts)
    state = sched.new_state()
    sched.step(state, 0, [Submit(JobSpec("flaky", gpus=4, max_restarts=2))])
    r = sched.step(state, 100, [Fail("flaky", "exit 1")])
    assert kinds(r, Requeue) == [Requeue("flaky", 110, 1)] and r.wake_at == 110
    assert state.jobs["flaky"].status == BACKOFF and not kinds(r, Start)
    assert not kinds(sched.step(state, 105), Start)  # still backing off
    r = sched.step(state, 110)
    assert kinds(r, Start) and kinds(r, Start)[0].resume
    r = sched.step(state, 200, [Fail("flaky")])
    assert kinds(r, Requeue)[0].at == 215  # 20 s doubled, capped at 15
    sched.step(state, 215)
    r = sched.step(state, 300, [Fail("flaky", "exit 1")])
    assert [d.job for d in kinds(r, GiveUp)] == ["flaky"] and "gave up after 2 restarts" in kinds(r, GiveUp)[0].reason
    assert state.jobs["flaky"].status == FAILED and state.jobs["flaky"].restarts == 3


def test_node_down_requeues_its_jobs_and_node_up_brings_capacity_back():
    sched = Scheduler(ClusterSpec.uniform(2, 4), "fifo", options=SchedulerOptions(restart_penalty_s=0))
    state = sched.new_state()
    r = sched.step(state, 0, [Submit(JobSpec("x", gpus=4)), Submit(JobSpec("y", gpus=4))])
    node_x = kinds(r, Start)[0].placement[0][0]
    r = sched.step(state, 50, [Checkpoint("x")])
    r = sched.step(state, 80, [NodeDown(node_x)])
    (p,) = kinds(r, Preempt)
    assert p.job == "x" and "down" in p.reason and p.lost_s == pytest.approx(30)  # crash: since the checkpoint
    assert not kinds(r, Start)  # the other node is busy
    r = sched.step(state, 90, [NodeUp(node_x)])
    assert started(r) == {"x": 4}
    r = sched.step(state, 95, [NodeUp(NodeSpec("extra", "gpu", 4)), Submit(JobSpec("z", gpus=4))])
    assert kinds(r, Start)[0].placement == (("extra", 4),)


def test_impossible_jobs_are_rejected_with_a_reason():
    cluster = two_team_cluster(cohort=None)
    sched = Scheduler(cluster, "fifo")
    state = sched.new_state()
    r = sched.step(state, 0, [
        Submit(JobSpec("huge", queue="team-a", gpus=9)),
        Submit(JobSpec("nowhere", queue="team-x")),
        Submit(JobSpec("h100", queue="team-a", flavors=("H100",))),
        Submit(JobSpec("over-quota", queue="team-a", gpus=6)),
    ])
    reasons = {d.job: d.reason for d in kinds(r, Reject)}
    assert "9 GPUs > 8 gpu GPUs in the cluster" in reasons["huge"]
    assert "unknown queue 'team-x'" in reasons["nowhere"]
    assert "no node has an allowed flavor (H100)" in reasons["h100"]
    assert "queue a can hold at most 4 gpu GPUs, the job needs 6" in reasons["over-quota"]
    assert all(state.jobs[j].status == REJECTED for j in reasons)


def test_submit_is_idempotent_and_cancel_stops_a_running_job():
    sched = Scheduler(ClusterSpec.uniform(1, 4), "fifo")
    state = sched.new_state()
    spec = JobSpec("j", gpus=2)
    r = sched.step(state, 0, [Submit(spec), Submit(spec)])
    assert len(kinds(r, Start)) == 1 and len(state.jobs) == 1
    r = sched.step(state, 1, [Submit(JobSpec("j", gpus=3))])
    assert kinds(r, Reject) and state.jobs["j"].spec == spec
    r = sched.step(state, 2, [Cancel("j"), Finish("ghost")])
    assert kinds(r, Stop) == [Stop("j", "cancelled")] and state.jobs["j"].status == "cancelled"
    with pytest.raises(SchedulerError, match="time went backwards"):
        sched.step(state, 1)


def test_state_survives_a_json_round_trip_mid_run():
    cluster = two_team_cluster()
    script = [
        (0, [Submit(JobSpec(f"a{i}", queue="team-a", gpus=2, checkpoint_interval_s=60)) for i in range(4)]),
        (100, [Submit(JobSpec("b0", queue="team-b", gpus=4, priority=1)), Fail("a1")]),
        (200, [Finish("a0")]),
        (300, []),
        (400, [Finish("b0"), Submit(JobSpec("b1", queue="team-b", gpus=2))]),
    ]

    def run(round_trip: bool):
        sched = Scheduler(cluster, "priority")
        state = sched.new_state()
        log = []
        for now, events in script:
            if round_trip:  # what a service does between steps: store, then load
                state = ClusterState.from_dict(json.loads(json.dumps(state.to_dict())))
                events = [event_from_dict(json.loads(json.dumps(to_dict(e)))) for e in events]
            r = sched.step(state, now, events)
            log.append([decision_from_dict(to_dict(d)) for d in r.decisions] + [r.wake_at])
        return log, state

    plain, s1 = run(False)
    stored, s2 = run(True)
    assert plain == stored
    assert s1.to_dict() == s2.to_dict() and s1.usage == s2.usage
    assert any(d for step in plain for d in step if isinstance(d, Preempt))


def test_flavors_are_tried_in_order_of_preference():
    flavors = {"fast": Flavor("fast"), "slow": Flavor("slow")}
    nodes = (NodeSpec("f0", "fast", 2), NodeSpec("s0", "slow", 4))
    cluster = ClusterSpec.build(flavors, nodes)
    sched = Scheduler(cluster, "fifo")
    state = sched.new_state()
    r = sched.step(state, 0, [Submit(JobSpec("p", gpus=2, flavors=("fast", "slow"))),
                              Submit(JobSpec("q", gpus=2, flavors=("fast", "slow"))),
                              Submit(JobSpec("elastic", gpus=4, min_gpus=1, flavors=("fast",)))])
    assert {d.job: d.flavor for d in kinds(r, Start)} == {"p": "fast", "q": "slow"}
    assert state.jobs["elastic"].status == QUEUED  # partial admission needs a free fast GPU
    r = sched.step(state, 1, [Finish("p")])
    assert started(r) == {"elastic": 2}  # elastic: as many as fit, down to its minimum


def test_local_queues_map_to_cluster_queues_and_weights_drive_drf():
    def cluster(weight_a: float) -> ClusterSpec:
        queues = {  # a and b own nothing: they share what `pool` lends, by weighted dominant share
            "pool": ClusterQueue("pool", {"gpu": 8}, cohort="c"),
            "a": ClusterQueue("a", {"gpu": 0}, cohort="c", weight=weight_a),
            "b": ClusterQueue("b", {"gpu": 0}, cohort="c"),
        }
        return ClusterSpec.uniform(2, 4, queues=queues, local_queues={"A": LocalQueue("A", "a"), "B": LocalQueue("B", "b")})

    jobs = [Submit(JobSpec(f"{q}{i}", queue=q.upper(), gpus=1)) for i in range(8) for q in "ab"]
    for weight, split in ((3.0, (6, 2)), (1.0, (4, 4))):
        sched = Scheduler(cluster(weight), "drf")
        state = sched.new_state()
        got = started(sched.step(state, 0, jobs))
        assert (sum(j.startswith("a") for j in got), sum(j.startswith("b") for j in got)) == split
        assert state.jobs["a0"].cq == "a" and state.jobs["b0"].cq == "b"
    # weights 1:1, a finishes three jobs and b one: a is now below its share, so it gets 3 of the 4
    r = sched.step(state, 10, [Finish("a0"), Finish("a1"), Finish("a2"), Finish("b0")])
    assert set(started(r)) == {"a4", "a5", "a6", "b4"}


class _NeedsWholeNodes:
    """A speed model for which a job runs only with at least 2 GPUs on each of its nodes (as a model that fits
    2 per node but not 1 per node)."""

    def rate(self, job, flavor, gpus):
        return 1.0

    def remaining(self, job):
        return 100.0

    def infeasible(self, spec, flavor, gpus):
        return None

    def runs_on(self, job, flavor, shape):
        return sum(shape) == 1 or min(shape) >= 2


def test_a_placement_the_speed_model_cannot_run_is_not_taken():
    """Two 1-GPU jobs spread over two 2-GPU nodes leave one GPU free on each: a 2-GPU job waits rather than run
    scattered where it would make no progress (the simulator found such jobs never finishing), and starts whole
    on a node once one frees up."""
    spec = ClusterSpec.uniform(2, 2)
    sched = Scheduler(spec, "fifo", speed=_NeedsWholeNodes(), placement="spread")
    state = sched.new_state()
    r = sched.step(state, 0, [Submit(JobSpec("a1", gpus=1)), Submit(JobSpec("a2", gpus=1))])
    assert started(r) == {"a1": 1, "a2": 1}
    assert len({node for name in ("a1", "a2") for node, _ in state.jobs[name].placement}) == 2  # one per node
    r = sched.step(state, 10, [Submit(JobSpec("b", gpus=2))])
    assert "b" not in started(r) and state.jobs["b"].status == QUEUED
    r = sched.step(state, 20, [Finish("a1")])
    assert started(r) == {"b": 2} and [k for _, k in state.jobs["b"].placement] == [2]
    # without the speed model's say, the scattered placement is taken
    plain = Scheduler(spec, "fifo", placement="spread")
    state = plain.new_state()
    plain.step(state, 0, [Submit(JobSpec("a1", gpus=1)), Submit(JobSpec("a2", gpus=1))])
    assert started(plain.step(state, 10, [Submit(JobSpec("b", gpus=2))])) == {"b": 2}
