"""The simulator: exact outcomes on hand-made workloads, each policy on a tiny workload, the Pollux job
model's arithmetic on a synthetic application, LLM jobs on two accelerator types, and (when the shared
traces are present) the published Tiresias result on one Pollux workload."""

from __future__ import annotations

import json

import pytest

from flopwise.cluster.apps import PolluxApp
from flopwise.cluster.base import SchedulerOptions
from flopwise.cluster.core import Scheduler
from flopwise.cluster.events import Submit
from flopwise.cluster.jobmodels import JobModels
from flopwise.cluster.simulator import SimConfig, Workload, simulate
from flopwise.cluster.spec import ClusterSpec, Flavor, JobSpec, NodeSpec
from flopwise.cluster.traces import read_openb, read_pollux

PUBLISHED_TIRESIAS_W1 = 2474  # ../shared/traces/pollux/README.md


def trace_workload(cluster: ClusterSpec, jobs: list[JobSpec]) -> Workload:
    return Workload(cluster, jobs, JobModels(cluster), source="test")


def jct(result) -> dict[str, float]:
    return {j["name"]: j["jct_s"] for j in result.jobs if "jct_s" in j}


def test_fifo_rounds_restart_penalty_and_backfill_by_hand():
    cluster = ClusterSpec.uniform(1, 4)
    jobs = [
        JobSpec("j1", gpus=2, duration_s=100, submit_time=0),
        JobSpec("j2", gpus=4, duration_s=50, submit_time=10),
        JobSpec("j3", gpus=2, duration_s=30, submit_time=20),
    ]
    r = simulate(trace_workload(cluster, jobs), SimConfig("fifo", interval=60, restart_penalty=30))
    # seen at the 60 s round; 30 s restart; j3 backfills beside j1; j1's end is seen at 240, then j2 runs
    assert jct(r) == {"j1": 190, "j2": 310, "j3": 100}
    s = r.summary
    assert s["avg_jct_s"] == pytest.approx(200) and s["makespan_s"] == 320
    assert s["utilisation"] == pytest.approx((4 * 60 + 2 * 120 + 4 * 80) / (4 * 320))
    assert s["avg_queue_s"] == pytest.approx((60 + 230 + 40) / 3)
    assert set(s) >= {"avg_jct_s", "p50_jct_s", "p99_jct_s", "makespan_s", "utilisation", "jobs",
                      "gpu_hours_per_queue", "finish_time_fairness", "preemptions", "restarts"}
    json.dumps(r.to_dict(per_job=True))


@pytest.mark.parametrize("policy", ["fifo", "priority", "drf", "tiresias", "goodput"])
def test_each_policy_finishes_a_tiny_workload(policy):
    cluster = ClusterSpec.uniform(2, 4)
    jobs = [JobSpec(f"j{i}", gpus=g, duration_s=d, submit_time=t, priority=p, min_gpus=1 if e else 0, max_gpus=8 if e else 0)
            for i, (g, d, t, p, e) in enumerate([(4, 3000, 0, 0, True), (8, 600, 30, 0, False), (2, 900, 60, 1, True),
                                                 (1, 300, 90, 0, False), (6, 1200, 400, 2, False)])]
    jobs.append(JobSpec("too-big", gpus=9, duration_s=10, submit_time=0))
    r = simulate(trace_workload(cluster, jobs), SimConfig(policy))
    s = r.summary
    assert s["finished"] == 5 and s["rejected"] == 1 and s["unfinished"] == 0
    assert s["rejections"][0]["job"] == "too-big"
    assert 0 < s["utilisation"] <= 1 and s["avg_jct_s"] > 0


def test_goodput_runs_the_shorter_elastic_job_on_all_gpus_first():
    cluster = ClusterSpec.uniform(1, 4)
    jobs = [JobSpec("long", gpus=2, min_gpus=1, max_gpus=4, duration_s=4000, submit_time=0),
            JobSpec("short", gpus=2, min_gpus=1, max_gpus=4, duration_s=400, submit_time=0)]
    results = {p: simulate(trace_workload(cluster, jobs), SimConfig(p)) for p in ("fifo", "goodput")}
    # fifo: 2 GPUs each (their request); goodput: 4 GPUs to the short one (linear speed-up), then all to the long one
    fifo, good = jct(results["fifo"]), jct(results["goodput"])
    assert good["short"] < fifo["short"] and good["short"] == pytest.approx(60 + 30 + 400 * 2 / 4, abs=1)
    assert results["goodput"].summary["avg_jct_s"] < results["fifo"].summary["avg_jct_s"]
    assert good["long"] == pytest.approx(300 + 30 + 4000 * 2 / 4, abs=1)  # starts when short's end is seen


def test_tiresias_demotes_after_its_threshold_and_rotates_jobs():
    sched = Scheduler(ClusterSpec.uniform(1, 2), "tiresias", options=SchedulerOptions(las_threshold_gpu_s=100))
    state = sched.new_state()
    r = sched.step(state, 0, [Submit(JobSpec("a", gpus=2))])
    assert r.wake_at == 50  # 100 GPU-seconds on 2 GPUs
    r = sched.step(state, 30, [Submit(JobSpec("b", gpus=2))])
    assert not r.decisions  # a is still in the first queue, ahead of b
    r = sched.step(state, 60)  # a demoted: b (first queue) preempts it
    assert [type(d).__name__ for d in r.decisions] == ["Preempt", "Start"] and r.decisions[1].job == "b"
    assert state.jobs["a"].level == 1 and r.wake_at == 110
    r = sched.step(state, 110)  # b demoted later than a: a ranks first in the second queue
    assert [(type(d).__name__, d.job) for d in r.decisions] == [("Preempt", "b"), ("Start", "a")]


def test_node_failures_preempt_and_every_job_still_finishes():
    cluster = ClusterSpec.uniform(4, 4)
    jobs = [JobSpec(f"j{i}", gpus=4, duration_s=4 * 3600, submit_time=60 * i, checkpoint_interval_s=900) for i in range(6)]
    r = simulate(trace_workload(cluster, jobs), SimConfig("fifo", seed=3, node_mtbf_h=2.0, repair_h=0.5))
    s = r.summary
    assert s["finished"] == 6 and s["preemptions"] > 0 and s["lost_gpu_hours"] > 0
    again = simulate(trace_workload(cluster, jobs), SimConfig("fifo", seed=3, node_mtbf_h=2.0, repair_h=0.5))
    assert again.summary["avg_jct_s"] == s["avg_jct_s"]  # seeded: the same failures


def _toy_app(directory):
    """A Pollux-format application: step time 0.01 + 0.001 * batch per GPU, plus sync over more GPUs."""
    app = directory / "toy"
    app.mkdir(parents=True)
    rows = ["placement,local_bsz,step_time,sync_time"]
    for placement in ("1", "2", "4", "12", "22", "44"):
        gpus, nodes = sum(map(int, placement)), len(placement)
        sync = 0.0 if gpus == 1 else (0.005 if nodes == 1 else 0.02)
        for bsz in (16, 32, 64):
            rows.append(f"{placement},{bsz},{0.01 + 0.001 * bsz + sync},{sync}")
    (app / "placements.csv").write_text("\n".join(rows) + "\n")
    scal = ["num_nodes,num_replicas,local_bsz,step_time,sync_time"]
    for nodes, gpus in ((8, 8), (8, 16), (8, 32), (16, 64)):
        for bsz in (16, 32, 64):
            scal.append(f"{nodes},{gpus},{bsz},{0.01 + 0.001 * bsz + 0.03},0.03")
    (app / "scalability.csv").write_text("\n".join(scal) + "\n")
    for batch, var in ((64, 1.0), (128, 1.0), (4096, 1.0)):
        lines = ["progress,iteration,metric,grad_sqr,grad_var"] + [f"{100 * e},{e},0.5,1.0,{var}" for e in (1, 2, 3)]
        (app / f"validation-{batch}.csv").write_text("\n".join(lines) + "\n")
    return directory


def test_pollux_application_tables_and_epoch_arithmetic(tmp_path):
    app = PolluxApp(_toy_app(tmp_path) / "toy")
    assert (app.init_batch, app.max_batch, app.min_local, app.max_local, app.max_epochs) == (64, 4096, 16, 64, 3)
    assert app.throughput((2,), 32) == pytest.approx((0.01 + 0.032 + 0.005, 0.005))
    assert app.throughput((2, 1), 32) == app.throughput((1, 2), 32)  # placements are rotation-normalised
    assert app.throughput((2, 2), 48) == pytest.approx((0.01 + 0.048 + 0.02, 0.02))  # linear in batch
    step, _ = app.throughput((4, 4, 4), 32)  # not measured: interpolated between 2 and 8 nodes
    assert 0.01 + 0.032 + 0.02 <= step <= 0.01 + 0.032 + 0.03
    config = app.fixed_config(1, 64)
    assert (config.atomic, config.accum) == (64, 0)
    assert app.fixed_config(2, 256).batch == 256 and app.fixed_config(1, 256).accum == 3
    # one job on one GPU: goodput 1 / 0.074 per s; 100 progress per epoch -> round(7.4) = 7 s per epoch
    cluster = ClusterSpec.uniform(1, 4)
    w = Workload(cluster, [JobSpec("t", kind="train", app="toy", global_batch=64, submit_time=0)],
                 JobModels(cluster, apps={"toy": app}))
    r = simulate(w, SimConfig("fifo"))
    assert jct(r) == {"t": 60 + 30 + 3 * 7}
    # an unknown application is a rejection with a reason, not a crash
    w = Workload(cluster, [JobSpec("u", kind="train", app="nope", submit_time=0)], JobModels(cluster, apps={"toy": app}))
    r = simulate(w, SimConfig("fifo"))
    assert r.summary["rejected"] == 1 and "unknown application 'nope'" in r.summary["rejections"][0]["reason"]


def test_pollux_workload_reader_skips_bad_rows_and_goodput_adapts(tmp_path):
    _toy_app(tmp_path / "apps")
    csv = tmp_path / "workloads" / "w.csv"
    csv.parent.mkdir()
    csv.write_text("name,time,application,num_replicas,batch_size\n"
                   "a,0,toy,2,128\nb,5,toy,1,64\nbroken,7,toy\nneg,9,toy,-1,64\nc,10,toy,4,256\n")
    cluster = ClusterSpec.uniform(2, 4)
    fixed = read_pollux(csv, cluster, tmp_path / "apps", adaptive=False)
    assert [j.name for j in fixed.jobs] == ["a", "b", "c"] and len(fixed.skipped) == 2
    assert {s["line"] for s in fixed.skipped} == {4, 5} and "truncated" in fixed.skipped[0]["reason"]
    adaptive = read_pollux(csv, cluster, tmp_path / "apps", adaptive=True)
    assert all(j.adaptive_batch and j.min_gpus == 1 and j.max_gpus == 64 for j in adaptive.jobs)
    tiresias = simulate(fixed, SimConfig("tiresias"))
    goodput = simulate(adaptive, SimConfig("goodput"))
    assert tiresias.summary["finished"] == goodput.summary["finished"] == 3


def test_llm_jobs_go_to_the_faster_accelerator_under_goodput():
    flavors = {"v100": Flavor("v100", "V100-32GB"), "h100": Flavor("h100", "H100-SXM")}
    nodes = (NodeSpec("v0", "v100", 4), NodeSpec("h0", "h100", 4))  # the slow type comes first
    cluster = ClusterSpec.build(flavors, nodes)
    jobs = [JobSpec(f"ft{i}", kind="train", model="tiny", global_batch=64, tokens=2e10, gpus=1, submit_time=60 * i)
            for i in range(4)]
    out = {}
    for policy in ("fifo", "goodput"):
        r = simulate(Workload(cluster, jobs, JobModels(cluster)), SimConfig(policy))
        out[policy] = r
        assert r.summary["finished"] == 4
    assert {j["flavor"] for j in out["fifo"].jobs} == {"v100"}  # type-oblivious: first fit
    assert {j["flavor"] for j in out["goodput"].jobs} == {"h100"}  # the planner knows H100 is ~4x faster
    assert out["goodput"].summary["avg_jct_s"] < 0.5 * out["fifo"].summary["avg_jct_s"]
    # a model that fits no accelerator of the cluster is rejected with the planner's reason
    big = JobSpec("huge", kind="train", model="yuan2-102b", global_batch=64, tokens=1e9, gpus=1)
    r = simulate(Workload(cluster, [big], JobModels(cluster)), SimConfig("fifo"))
    assert r.summary["rejected"] == 1 and "does not run on 1 x" in r.summary["rejections"][0]["reason"]


def test_tiresias_reproduces_the_published_result_on_pollux_workload_1(pollux_traces):
    w = read_pollux(pollux_traces / "workloads" / "workload-1.csv", ClusterSpec.uniform(16, 4),
                    pollux_traces / "apps", adaptive=False)
    r = simulate(w, SimConfig("tiresias"))
    assert r.summary["finished"] == 160
    assert r.summary["avg_jct_s"] == pytest.approx(PUBLISHED_TIRESIAS_W1, rel=0.005)
    assert r.summary["preemptions"] > 0  # least-attained-service preempts


def test_openb_pods_become_llm_jobs_on_their_gpu_types(tmp_path):
    (tmp_path / "openb_node_list_gpu_node.csv").write_text(
        "sn,cpu_milli,memory_mib,gpu,model\nn0,8000,61440,2,P100\nn1,96000,393216,8,G3\nn2,8000,1000,0,\n"
    )
    pods = tmp_path / "openb_pod_list_default.csv"
    pods.write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"
        "p0,1000,1000,1,500,,LS,Running,0,600,0\n"          # a shared GPU: one whole GPU
        "p1,1000,1000,1,1000,P100,LS,Running,10,1210,10\n"  # constrained to P100
        "cpu,1000,1000,0,0,,LS,Running,20,50,20\n"          # a CPU pod: not a job
        "never,1000,1000,1,1000,,LS,Pending,30,,\n"         # never scheduled: skipped
        "bad,1000,1000,1,1000,H100,LS,Running,40,100,40\n"  # unknown type: skipped
        "cut,1000\n"
    )
    w = read_openb(pods, None)
    assert [j.name for j in w.jobs] == ["p0", "p1"] and w.jobs[1].flavors == ("P100",)
    assert {s["line"] for s in w.skipped} == {5, 6, 7}
    assert w.cluster.flavors["G3"].accelerator == "A100-80GB" and w.cluster.total_gpus == 10
    # tokens: the pod's run time on a V100-32GB; on the A100-80GB (G3) it is faster, on a P100 slower
    good = simulate(w, SimConfig("goodput"))
    flavors = {j["name"]: j["flavor"] for j in good.jobs}
    assert flavors == {"p0": "G3", "p1": "P100"}
    times = jct(good)
    assert times["p0"] < 600 + 60 and times["p1"] > 1200


def test_an_llm_job_waits_rather_than_run_scattered_where_the_planner_finds_no_layout():
    """yuan2-2b on 8 P100s fits two per node but not one per node (the planner's memory model). Two 1-GPU jobs leave
    five nodes with one or two free GPUs: the 8-GPU job waits for whole nodes instead of starting scattered and
    never finishing (the openb benchmark crashed on such a job), and every job finishes."""
    cluster = ClusterSpec.build({"p100": Flavor("p100", "P100")}, tuple(NodeSpec(f"n{i}", "p100", 2) for i in range(5)))
    models = JobModels(cluster)
    big = JobSpec("big", kind="train", model="yuan2-2b", global_batch=256, tokens=2e6, gpus=8, submit_time=60)
    from flopwise.cluster.state import JobState

    state = JobState(big, 0)
    assert models.runs_on(state, "p100", (2, 2, 2, 2)) and not models.runs_on(state, "p100", (2, 2, 2, 1, 1))
    small = [JobSpec(f"s{i}", kind="train", model="tiny", global_batch=64, tokens=5e8, gpus=1, submit_time=0)
             for i in range(2)]
    r = simulate(Workload(cluster, [*small, big], models), SimConfig("fifo", placement="spread"))
    assert r.summary["finished"] == 3
    (row,) = [j for j in r.jobs if j["name"] == "big"]
    finish = {j["name"]: j for j in r.jobs}
    assert row["start_s"] >= min(finish[f"s{i}"]["finish_s"] for i in range(2))  # it waited for a whole node
