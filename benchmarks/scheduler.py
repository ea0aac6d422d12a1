"""Scheduler and simulator benchmarks (issue 9), on the public traces in ../shared/traces.

1. fidelity  `tiresias` on the Pollux artifact's 8 workloads vs the published Tiresias average JCT
2. policy    `goodput` on the same workloads vs the published Tiresias and Pollux averages
3. speed     CPU and wall time of one Pollux workload (one process, one core); the whole Philly trace
             (82,247 jobs) on 2,000 GPUs: CPU, wall time and peak memory, each policy in a fresh process
4. openb     LLM jobs from the Alibaba openb pods on its 7-type cluster: planner-aware `goodput` vs
             type-oblivious placement (fifo with best-fit packing, and with spreading)

    .venv/bin/python benchmarks/scheduler.py                       # everything (~20 min on 2 loaded cores)
    .venv/bin/python benchmarks/scheduler.py --only fidelity,policy --workloads 1,6
    .venv/bin/python benchmarks/scheduler.py --artifact-summary PATH  # also compare per job with the
        artifact's results-jobload/tiresias-1.0/summary.json (adaptdl, branch osdi21-artifact)

Writes benchmarks/results/scheduler.json and benchmarks/figures/scheduler_*.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from flopwise.atomic import atomic_write_json
from flopwise.cluster.plot import plot_results
from flopwise.cluster.simulator import SimConfig, Workload, simulate
from flopwise.cluster.spec import ClusterSpec
from flopwise.cluster.speed import PlannerSpeeds
from flopwise.cluster.traces import read_openb, read_philly, read_pollux

HERE = Path(__file__).resolve().parent
# ../shared/traces/pollux/README.md (the artifact's results-jobload/*-1.0/summary.json; Pollux paper fig. 8a)
PUBLISHED = {
    "tiresias": [2474, 5145, 3876, 3280, 3501, 3470, 5480, 5080],
    "pollux": [2089, 3323, 2188, 2721, 2674, 2446, 3616, 2952],
    "optimus": [4087, 6914, 3944, 5968, 5656, 5302, 7291, 6294],
}
PUBLISHED_MEAN = {"tiresias": 4038, "pollux": 2751, "optimus": 5682}


def environment() -> dict:
    import scipy

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
    }


def run_pollux(traces: Path, policy: str, workloads: list[int], figures: Path | None = None) -> dict:
    rows, results = [], {}
    for w in workloads:
        work = read_pollux(traces / "pollux" / "workloads" / f"workload-{w}.csv", ClusterSpec.uniform(16, 4),
                           traces / "pollux" / "apps", adaptive=policy == "goodput")
        cpu, wall = time.process_time(), time.perf_counter()
        result = simulate(work, SimConfig(policy))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        s = result.summary
        rows.append({"workload": w, "avg_jct_s": s["avg_jct_s"], "p99_jct_s": s["p99_jct_s"], "finished": s["finished"],
                     "utilisation": s["utilisation"], "preemptions": s["preemptions"], "resizes": s["resizes"],
                     "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
                     "published_tiresias_s": PUBLISHED["tiresias"][w - 1], "published_pollux_s": PUBLISHED["pollux"][w - 1]})
        results[w] = result
        print(f"  {policy} workload-{w}: avg JCT {s['avg_jct_s']:.0f} s (published Tiresias "
              f"{PUBLISHED['tiresias'][w - 1]}, Pollux {PUBLISHED['pollux'][w - 1]}), {cpu:.1f} s CPU, {wall:.1f} s wall",
              flush=True)
    mean = float(np.mean([r["avg_jct_s"] for r in rows]))
    out = {"policy": policy, "workloads": rows, "mean_avg_jct_s": mean,
           "max_cpu_s": max(r["cpu_s"] for r in rows), "max_wall_s": max(r["wall_s"] for r in rows)}
    if len(workloads) == 8:
        out["vs_published_tiresias_mean"] = mean / PUBLISHED_MEAN["tiresias"] - 1
        out["vs_published_pollux_mean"] = mean / PUBLISHED_MEAN["pollux"] - 1
    out["_results"] = results
    return out


def per_job_check(traces: Path, summary_path: Path, workloads: list[int]) -> dict:
    """Each job's JCT under `tiresias` against the artifact's per-job results."""
    published = json.loads(summary_path.read_text())["jcts"]
    out = {}
    for w in workloads:
        work = read_pollux(traces / "pollux" / "workloads" / f"workload-{w}.csv", ClusterSpec.uniform(16, 4),
                           traces / "pollux" / "apps", adaptive=False)
        result = simulate(work, SimConfig("tiresias"))
        ref = published[f"workload-{w}"]
        diffs = [abs(j["jct_s"] - ref[j["name"]]) for j in result.jobs]
        out[w] = {"jobs": len(diffs), "identical": sum(d < 0.5 for d in diffs), "max_abs_diff_s": max(diffs)}
        print(f"  workload-{w}: {out[w]['identical']}/{out[w]['jobs']} jobs with the artifact's JCT", flush=True)
    return out


def philly_one(traces: Path, policy: str, gpus: int) -> dict:
    """One policy on the whole Philly trace (run in its own process for a clean peak-memory figure)."""
    cpu, wall = time.process_time(), time.perf_counter()
    work = read_philly(traces / "pollux" / "philly.csv", None, gpus // 8, 8, "per-vc")
    result = simulate(work, SimConfig(policy))
    s = result.summary
    return {"policy": policy, "gpus": gpus, "jobs": s["jobs"], "finished": s["finished"], "avg_jct_s": s["avg_jct_s"],
            "p99_jct_s": s["p99_jct_s"], "avg_queue_s": s["avg_queue_s"], "utilisation": s["utilisation"],
            "preemptions": s["preemptions"], "cpu_s": round(time.process_time() - cpu, 1),
            "wall_s": round(time.perf_counter() - wall, 1),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def run_philly(traces: Path, policies: list[str], gpus: int) -> list[dict]:
    rows = []
    for policy in policies:
        proc = subprocess.run([sys.executable, __file__, "--philly-one", policy, "--gpus", str(gpus), "--traces",
                               str(traces)], capture_output=True, text=True, check=False)
        if proc.returncode:
            raise SystemExit(f"philly {policy} failed:\n{proc.stderr[-2000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["load_average_after"] = os.getloadavg()
        rows.append(row)
        print(f"  philly {policy} on {gpus} GPUs: {row['cpu_s']} s CPU, {row['wall_s']} s wall, "
              f"{row['max_rss_mb']} MB peak, avg JCT {row['avg_jct_s']:.0f} s", flush=True)
    return rows


def random_types(work: Workload, seed: int = 0) -> list:
    """Each job's allowed GPU types in a random order, weighted by how many GPUs of each type there are:
    a scheduler that does not know the types puts a job on a random free GPU."""
    caps = {f: work.cluster.capacity(f) for f in work.cluster.flavors}
    rng = np.random.default_rng(seed)
    jobs = []
    for job in work.jobs:
        types = list(job.flavors or caps)
        p = np.array([caps[t] for t in types], dtype=float)
        order = rng.choice(len(types), size=len(types), replace=False, p=p / p.sum())
        jobs.append(dataclasses.replace(job, flavors=tuple(types[i] for i in order)))
    return jobs


def run_openb(traces: Path, scales: list[float], cache: Path, gpu_maps: dict[str, dict]) -> dict:
    """fifo taking the first allowed type in the node list's order; fifo on a random GPU (types in a
    capacity-weighted random order); goodput (the planner's speed on every type). Under each GPU-model
    mapping (the default assumes G2/G3 are A100s; a variant makes them V100s)."""
    planner = PlannerSpeeds(cache)
    out: dict = {"runs": [], "_results": {}}
    for map_name, gpu_map in gpu_maps.items():
        base = read_openb(traces / "alibaba-openb" / "openb_pod_list_gpuspec33.csv", None, gpu_map, planner=planner)
        planner.save()
        out.setdefault("jobs", len(base.jobs))
        out.setdefault("skipped_rows", len(base.skipped))
        out.setdefault("gpus_per_type", {f: base.cluster.capacity(f) for f in base.cluster.flavors})
        out.setdefault("accelerators", {})[map_name] = {f: fl.accelerator for f, fl in base.cluster.flavors.items()}
        for scale in scales if map_name == "default" else scales[:1]:
            jobs = [dataclasses.replace(j, submit_time=j.submit_time / scale) for j in base.jobs]
            work = Workload(base.cluster, jobs, base.models, base.skipped, base.source)
            shuffled = Workload(base.cluster, random_types(work), base.models, base.skipped, base.source)
            for label, policy, w in (("fifo, first type", "fifo", work), ("fifo, random GPU", "fifo", shuffled),
                                     ("goodput", "goodput", work)):
                cpu = time.process_time()
                result = simulate(w, SimConfig(policy))
                planner.save()
                s = result.summary
                types: dict[str, int] = {}
                for j in result.jobs:
                    types[j.get("flavor", "-")] = types.get(j.get("flavor", "-"), 0) + 1
                out["runs"].append({"gpu_map": map_name, "arrivals_compressed": scale, "policy": label,
                                    "avg_jct_s": s["avg_jct_s"], "p50_jct_s": s["p50_jct_s"], "p99_jct_s": s["p99_jct_s"],
                                    "avg_queue_s": s["avg_queue_s"], "utilisation": s["utilisation"],
                                    "finished": s["finished"], "rejected": s["rejected"], "jobs_per_type": types,
                                    "cpu_s": round(time.process_time() - cpu, 1)})
                out["_results"][(map_name, scale, label)] = result
                print(f"  openb [{map_name}] x{scale:g} {label}: avg JCT {s['avg_jct_s']:.0f} s, "
                      f"p50 {s['p50_jct_s']:.0f} s, queue {s['avg_queue_s']:.0f} s, types {types}", flush=True)
    return out


def pollux_figure(fid: dict, pol: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = [r["workload"] for r in fid["workloads"]]
    x = np.arange(len(ws))
    fig, ax = plt.subplots(figsize=(9, 3.6))
    bars = [
        ("published Tiresias", [PUBLISHED["tiresias"][w - 1] for w in ws], "#bbbbbb"),
        ("flopwise tiresias", [r["avg_jct_s"] for r in fid["workloads"]], "#4c72b0"),
        ("published Pollux", [PUBLISHED["pollux"][w - 1] for w in ws], "#dddd88"),
        ("flopwise goodput", [r["avg_jct_s"] for r in pol["workloads"]], "#55a868"),
    ]
    for i, (label, values, color) in enumerate(bars):
        ax.bar(x + (i - 1.5) * 0.2, np.array(values) / 3600, 0.2, label=label, color=color)
    ax.set_xticks(x, [f"w{w}" for w in ws])
    ax.set_ylabel("average JCT (hours)")
    ax.set_title("Pollux artifact workloads, 16 nodes x 4 GPUs")
    ax.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=Path, default=HERE.parent.parent / "shared" / "traces")
    ap.add_argument("--only", default="fidelity,policy,philly,openb")
    ap.add_argument("--workloads", default="1,2,3,4,5,6,7,8")
    ap.add_argument("--philly-policies", default="fifo,tiresias,drf")
    ap.add_argument("--gpus", type=int, default=2000)
    ap.add_argument("--openb-scales", default="1,300", help="arrival compression factors (1 = the trace's times)")
    ap.add_argument("--artifact-summary", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "scheduler.json")
    ap.add_argument("--figures", type=Path, default=HERE / "figures")
    ap.add_argument("--planner-cache", type=Path, default=Path(".flopwise-cache/planner-speeds.json"))
    ap.add_argument("--philly-one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.philly_one:
        print(json.dumps(philly_one(args.traces, args.philly_one, args.gpus)))
        return
    if not (args.traces / "pollux").is_dir():
        raise SystemExit(f"traces not found at {args.traces} (shared/ must sit beside the repository)")
    only = set(args.only.split(","))
    workloads = [int(w) for w in args.workloads.split(",")]
    args.figures.mkdir(parents=True, exist_ok=True)
    report: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "environment": environment()}
    if "fidelity" in only:
        print("fidelity: tiresias vs published Tiresias", flush=True)
        report["fidelity"] = run_pollux(args.traces, "tiresias", workloads)
        if args.artifact_summary:
            report["fidelity"]["per_job"] = per_job_check(args.traces, args.artifact_summary, workloads)
    if "policy" in only:
        print("policy: goodput vs published Tiresias and Pollux", flush=True)
        report["policy"] = run_pollux(args.traces, "goodput", workloads)
    if "fidelity" in report and "policy" in report:
        pollux_figure(report["fidelity"], report["policy"], args.figures / "scheduler_pollux.png")
        w = 6 if 6 in workloads else workloads[0]
        plot_results({"tiresias": report["fidelity"]["_results"][w], "goodput": report["policy"]["_results"][w]},
                     args.figures / "scheduler_pollux_w6.png", title=f"Pollux workload-{w}")
    if "philly" in only:
        print(f"speed: the Philly trace on {args.gpus} GPUs", flush=True)
        report["philly"] = run_philly(args.traces, args.philly_policies.split(","), args.gpus)
    if "openb" in only:
        print("heterogeneity: openb, planner-aware vs type-oblivious", flush=True)
        scales = [float(s) for s in args.openb_scales.split(",")]
        maps = {"default": {}, "G2,G3 as V100-32GB": {"G2": "V100-32GB", "G3": "V100-32GB"}}
        report["openb"] = run_openb(args.traces, scales, args.planner_cache, maps)
        for scale in scales:
            plot_results({label: r for (m, sc, label), r in report["openb"]["_results"].items()
                          if sc == scale and m == "default"},
                         args.figures / f"scheduler_openb_x{scale:g}.png",
                         title=f"openb pods as LLM jobs, arrivals compressed x{scale:g}")
    report["environment"]["load_average_end"] = os.getloadavg()
    for section in report.values():
        if isinstance(section, dict):
            section.pop("_results", None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
