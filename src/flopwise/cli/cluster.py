"""`flopwise cluster`: the shared GPU pool. `simulate` replays a workload through the scheduler core.

flopwise cluster simulate ../shared/traces/pollux/workloads/workload-6.csv --policy tiresias
flopwise cluster simulate ../shared/traces/pollux/philly.csv --format philly --nodes 250 --gpus-per-node 8
flopwise cluster simulate examples/cluster_jobs.toml --cluster examples/cluster.toml --policy goodput --json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flopwise.cli import cluster_service
from flopwise.cli.common import NON_NEGATIVE, POSITIVE, console, err_console
from flopwise.cluster.metrics import SimResult
from flopwise.cluster.plot import plot_results
from flopwise.cluster.policies import POLICIES
from flopwise.cluster.simulator import SimConfig, Workload, simulate
from flopwise.cluster.spec import ClusterSpec, load_cluster
from flopwise.cluster.speed import PlannerSpeeds
from flopwise.cluster.traces import (
    FORMATS,
    detect_format,
    parse_gpu_map,
    read_flopwise,
    read_openb,
    read_philly,
    read_pollux,
)
from flopwise.errors import ConfigError
from flopwise.outputs import output_file

app = typer.Typer(
    help="A shared GPU pool: queues with quotas, gang scheduling, preemption. `simulate` replays a workload.",
    no_args_is_help=True,
)

DEFAULT_NODES = {"pollux": (16, 4), "philly": (250, 8), "flopwise": (4, 8)}


def _cluster(fmt: str, cluster_file: Path | None, nodes: int | None, gpus_per_node: int | None,
             gpu: str | None) -> ClusterSpec | None:
    """The cluster the user gave (file or --nodes), else the format's default; None: the format's loader
    builds it (philly: per-VC queues; openb: the node list beside the pods)."""
    if cluster_file is not None:
        if nodes is not None or gpus_per_node is not None:
            raise ConfigError("give either --cluster FILE.toml or --nodes/--gpus-per-node, not both")
        return load_cluster(cluster_file)
    if fmt == "openb" and nodes is None and gpus_per_node is None:
        return None
    if fmt == "philly":
        return None
    n, g = DEFAULT_NODES.get(fmt, (16, 4))
    return ClusterSpec.uniform(nodes or n, gpus_per_node or g, accelerator=gpu)


def load_workload(path: Path, fmt: str, cluster: ClusterSpec | None, apps: Path | None, policy: str,
                  queues: str, gpu_map: str | None, nodes: int | None, gpus_per_node: int | None,
                  planner: PlannerSpeeds) -> Workload:
    if fmt == "pollux":
        apps = apps or path.resolve().parent.parent / "apps"
        return read_pollux(path, cluster, apps, adaptive=policy == "goodput")  # type: ignore[arg-type]
    if fmt == "philly":
        n, g = DEFAULT_NODES["philly"]
        return read_philly(path, cluster, nodes or n, gpus_per_node or g, queues)
    if fmt == "openb":
        return read_openb(path, cluster, parse_gpu_map(gpu_map), planner)
    return read_flopwise(path, cluster, planner)  # type: ignore[arg-type]


@app.command("simulate")
def simulate_cmd(
    workload: Path = typer.Argument(..., help="workload file: Pollux or Philly CSV, openb pod list, or a TOML of jobs"),
    fmt: str = typer.Option(None, "--format", help=f"{' | '.join(FORMATS)} (default: detected from the file)"),
    apps: Path = typer.Option(None, help="Pollux application tables (default: ../apps beside the workload folder)"),
    nodes: int = typer.Option(None, help="a uniform cluster of this many nodes (default per format: pollux 16, philly 250)"),
    gpus_per_node: int = typer.Option(None, help="GPUs per node of the uniform cluster (pollux 4, philly 8)"),
    gpu: str = typer.Option(None, help="accelerator of the uniform cluster's GPUs (catalogue name; LLM jobs need one)"),
    cluster: Path = typer.Option(None, help="cluster TOML: flavors, nodes, queues (instead of --nodes)"),
    policy: str = typer.Option("fifo", help=f"{' | '.join(POLICIES)}"),
    placement: str = typer.Option(None, help="pack (best fit; default) | spread (most free nodes first; tiresias)"),
    interval: float = typer.Option(60.0, help="seconds between scheduling rounds", callback=POSITIVE),
    restart_penalty: float = typer.Option(30.0, help="seconds without progress after each (re)start or resize",
                                          callback=NON_NEGATIVE),
    seed: int = typer.Option(0, help="seed of the failure injection (--node-mtbf)"),
    node_mtbf: float = typer.Option(0.0, help="inject node failures: mean hours between failures per node (0: none)",
                                    callback=NON_NEGATIVE),
    queues: str = typer.Option("per-vc", help="philly: per-vc (a queue per virtual cluster, one cohort) | single"),
    gpu_map: str = typer.Option(None, help="openb: GPU model to accelerator, e.g. G2=A100-40GB,G3=H100-SXM"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
    per_job: bool = typer.Option(False, help="with --json: include one record per job"),
    plot: Path = typer.Option(None, help="write the JCT CDF and utilisation over time to this PNG"),
    planner_cache: Path = typer.Option(Path(".flopwise-cache/planner-speeds.json"),
                                       help="file keeping the planner's predictions for LLM jobs between runs"),
) -> None:
    """Replay WORKLOAD through the scheduler core on a simulated cluster; report JCT, utilisation, fairness."""
    fmt = fmt or detect_format(workload)
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: must be one of {', '.join(FORMATS)}")
    if policy not in POLICIES:
        raise ConfigError(f"--policy {policy!r}: must be one of {', '.join(POLICIES)}")
    if queues not in ("per-vc", "single"):
        raise ConfigError(f"--queues {queues!r}: must be per-vc or single")
    for name, value in (("nodes", nodes), ("gpus-per-node", gpus_per_node)):
        if value is not None and value < 1:
            raise ConfigError(f"--{name} {value}: must be a positive integer")
    if plot is not None:
        output_file(plot, "--plot")  # before the replay, not after it
    config = SimConfig(policy, interval, restart_penalty, seed, node_mtbf, placement=placement)
    spec = _cluster(fmt, cluster, nodes, gpus_per_node, gpu)
    planner = PlannerSpeeds(planner_cache)
    work = load_workload(workload, fmt, spec, apps, policy, queues, gpu_map, nodes, gpus_per_node, planner)
    try:
        result = _run(work, config, show=not as_json)
    finally:
        planner.save()
    if plot is not None:
        plot_results({policy: result}, plot, title=f"{workload.name}: {policy}")
    if as_json:
        print(json.dumps(result.to_dict(per_job=per_job), indent=2))
        return
    _print(result, work, plot)


def _run(work: Workload, config: SimConfig, show: bool) -> SimResult:
    total = len(work.jobs)
    if not show:
        return simulate(work, config)
    with Progress(TextColumn("simulating"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} jobs"),
                  TextColumn("t = {task.fields[t]}"), TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("sim", total=total, t="0 h")
        last = [0.0]

        def update(t: float, done: int, _total: int) -> None:
            now = time.monotonic()
            if now - last[0] > 0.2:
                last[0] = now
                bar.update(task, completed=done, t=f"{t / 3600:,.0f} h")

        return simulate(work, config, progress=update)


def _fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f} s" if x < 3600 else f"{x / 3600:,.2f} h"


def _print(result: SimResult, work: Workload, plot: Path | None) -> None:
    s = result.summary
    table = Table(title=f"{s['source']} | policy {s['policy']} | {s['capacity_gpus']} GPUs", header_style="bold",
                  show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    ftf = s["finish_time_fairness"] or {}
    rows = [
        ("jobs (finished / rejected / failed / unfinished)",
         f"{s['jobs']:,} ({s['finished']:,} / {s['rejected']} / {s['failed']} / {s['unfinished']})"),
        ("average JCT", _fmt_s(s["avg_jct_s"])),
        ("p50 / p99 JCT", f"{_fmt_s(s['p50_jct_s'])} / {_fmt_s(s['p99_jct_s'])}"),
        ("average / p99 queueing delay", f"{_fmt_s(s['avg_queue_s'])} / {_fmt_s(s['p99_queue_s'])}"),
        ("makespan", _fmt_s(s["makespan_s"])),
        ("GPU utilisation (allocated)", f"{100 * s['utilisation']:.1f}%" if s["utilisation"] is not None else "-"),
        ("finish-time fairness mean / max (<=1: fair)",
         f"{ftf.get('mean', 0):.2f} / {ftf.get('max', 0):.2f}" if ftf else "-"),
        ("preemptions / restarts / resizes", f"{s['preemptions']} / {s['restarts']} / {s['resizes']}"),
        ("GPU-hours lost to preemption", f"{s['lost_gpu_hours']:,.1f}"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if len(s["gpu_hours_per_queue"]) > 1:
        q = Table(title="GPU-hours per queue", header_style="bold")
        q.add_column("queue")
        q.add_column("GPU-hours", justify="right")
        for name, hours in s["gpu_hours_per_queue"].items():
            q.add_row(name, f"{hours:,.1f}")
        console.print(q)
    for r in s["rejections"][:10]:
        console.print(f"rejected {r['job']}: {r['reason']}", highlight=False)
    if s["rejected"] > 10:
        console.print(f"... {s['rejected'] - 10} more rejections (--json lists 100)")
    if work.skipped:
        first = work.skipped[0]
        console.print(f"skipped {len(work.skipped)} input row(s); first: {first['file']}:{first['line']}: {first['reason']}",
                      highlight=False)
    if plot is not None:
        console.print(f"figure: {plot}")


cluster_service.register(app)  # up, submit, ls, show, logs, cancel, queue, nodes, usage: the live service
