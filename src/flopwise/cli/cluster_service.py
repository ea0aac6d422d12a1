"""`flopwise cluster up | submit | ls | show | logs | cancel | queue | nodes | usage`: the live service.

flopwise cluster up                                   # this machine: its GPUs, or one CPU slot per core
flopwise cluster submit examples/cluster_service/demo_train.toml
flopwise cluster queue; flopwise cluster logs ID --follow
"""

from __future__ import annotations

import datetime as dt
import json
import time
import tomllib
from pathlib import Path

import typer
from rich.table import Table

from flopwise.cli.common import console, err_console
from flopwise.errors import ConfigError

HOME_HELP = "the service's home: database, tokens.toml, job directories, endpoint.json"


def _home(home: Path | None) -> Path:
    from flopwise.cluster.service.server import DEFAULT_HOME

    return Path(home) if home is not None else DEFAULT_HOME


def _client(url: str | None, token: str | None, home: Path | None):
    from flopwise.cluster.service.client import Client

    return Client.find(url, token, _home(home))


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def _dump(data) -> None:
    print(json.dumps(data, indent=None))


def _print(rows: list[dict], as_json: bool, columns: tuple[str, ...], cells) -> None:
    """JSON for scripts, else a table of `columns` with `cells(row)` per row."""
    if as_json:
        _dump(rows)
        return
    table = Table()
    for col in columns:
        table.add_column(col)
    for r in rows:
        table.add_row(*cells(r))
    console.print(table)


URL = typer.Option(None, "--url", help="the service (default: FLOPWISE_CLUSTER_URL or HOME/endpoint.json)")
TOKEN = typer.Option(None, "--token", help="a team's bearer token (default: FLOPWISE_CLUSTER_TOKEN or HOME/tokens.toml)")
HOME = typer.Option(None, "--home", help=HOME_HELP)
JSON = typer.Option(False, "--json", help="print JSON for scripts")


def up(
    home: Path = HOME,
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8470, help="port of the API and the web page (0: any free port)"),
    db: str = typer.Option(None, "--db", help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB (default: HOME/cluster.db)"),
    queues: Path = typer.Option(None, "--queues", help="a cluster TOML whose [[queues]]/[[local_queues]] to use"),
    tokens: Path = typer.Option(
        None, "--tokens", help="tokens.toml: admin = TOKEN, [teams] team = TOKEN (default: HOME/tokens.toml, created)"),
    policy: str = typer.Option("priority", help="scheduling policy (fifo, priority, drf, tiresias)"),
    slots: int = typer.Option(None, help="CPU slots when this machine has no GPU (default: one per core)"),
    gpus: int = typer.Option(None, help="GPUs to use (default: those nvidia-smi lists)"),
    grace: float = typer.Option(30.0, help="seconds a preempted or cancelled job has to save and exit before SIGKILL"),
    ray: str = typer.Option(None, "--ray", help="run jobs on a Ray cluster: its address, or 'auto'"),
    ray_resource: str = typer.Option("GPU", help="with --ray: the node resource that counts as a GPU"),
    backoff: float = typer.Option(10.0, help="seconds before a failed job's first restart (doubles per failure, <= 600)"),
) -> None:
    """Start the service: the scheduler loop, the REST API and the web page on one port. Ctrl-C stops it;
    running jobs keep running and the next `up` adopts them."""
    from flopwise.cluster.policies import POLICIES
    from flopwise.cluster.service.daemon import ServiceOptions, local_cluster
    from flopwise.cluster.service.server import serve_forever

    if policy not in POLICIES or policy == "goodput":
        raise ConfigError(f"--policy {policy!r}: the service runs fifo, priority, drf or tiresias")
    cluster = None if ray else local_cluster(gpus, slots, queues)
    if ray and queues is not None:
        from flopwise.cluster.spec import load_cluster

        cluster = load_cluster(queues)  # only its queues: the nodes come from Ray

    def ready(url, service, toks) -> None:
        err_console.print(f"[bold]flopwise cluster[/] on {url}  (web page: {url}/, API docs: {url}/docs)")
        for node in service.cluster.nodes:
            err_console.print(f"node {node.name}: {node.gpus} {node.flavor} {'slots' if node.flavor == 'cpu' else 'GPUs'}")
        err_console.print(f"policy {policy}; database {service.store._safe_url()}{'; Ray ' + ray if ray else ''}")
        err_console.print(f"teams: {', '.join(toks.teams)} (tokens in {tokens or _home(home) / 'tokens.toml'})")

    serve_forever(_home(home), host, port, on_ready=ready, db=db, cluster=cluster, tokens=tokens, ray=ray,
                  ray_resource=ray_resource, options=ServiceOptions(policy=policy, grace_s=grace, backoff_base_s=backoff))


def submit(
    file: Path = typer.Argument(..., help="a job TOML (see examples/cluster_service/)"),
    url: str = URL, token: str = TOKEN, home: Path = HOME, as_json: bool = JSON,
) -> None:
    """Submit a job; prints its id. The same file with an `id` submitted twice is one job."""
    from flopwise.cluster.service.jobfile import resolve_paths

    try:
        data = tomllib.loads(file.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read job file {file}: {exc}") from None
    data = resolve_paths(data, file.resolve().parent, Path.cwd())
    result = _client(url, token, home).submit_table(data)
    if as_json:
        _dump(result)
    else:
        print(result["id"])


def ls(state: str = typer.Option(None, help="only jobs in this state"), url: str = URL, token: str = TOKEN,
       home: Path = HOME, as_json: bool = JSON) -> None:
    """The jobs of your team (admin: all)."""
    rows = _client(url, token, home).jobs(state)
    _print(rows, as_json, ("id", "name", "team", "kind", "queue", "gpus", "state", "reason", "updated"),
           lambda r: (r["id"], r["name"], r["team"], r["kind"], r["queue"], str(r["gpus"]), r["state"], r["reason"][:60],
                      _when(r["updated_at"])))


def show(job_id: str = typer.Argument(...), url: str = URL, token: str = TOKEN, home: Path = HOME,
         as_json: bool = JSON) -> None:
    """A job: its state, every transition with time and reason, its allocations."""
    job = _client(url, token, home).job(job_id)
    if as_json:
        _dump(job)
        return
    console.print(f"[bold]{job['id']}[/] ({job['name']}, team {job['team']}, {job['kind']}, queue {job['queue']}): "
                  f"[bold]{job['state']}[/] {job['reason']}", highlight=False)
    table = Table(title="transitions")
    for col in ("time", "from", "to", "reason"):
        table.add_column(col)
    for t in job["transitions"]:
        table.add_row(_when(t["at"]), t["from_state"] or "", t["to_state"], t["reason"])
    console.print(table)
    if job["allocations"]:
        table = Table(title="allocations")
        for col in ("attempt", "node", "gpus", "devices", "pid", "start", "end", "exit"):
            table.add_column(col)
        for a in job["allocations"]:
            table.add_row(str(a["attempt"]), a["node"], str(a["gpus"]), a["devices"], str(a["pid"]),
                          _when(a["started_at"]), _when(a["ended_at"]),
                          "" if a["exit_code"] is None else str(a["exit_code"]))
        console.print(table)


def logs(job_id: str = typer.Argument(...),
         follow: bool = typer.Option(False, "--follow", "-f", help="keep printing until the job ends"),
         url: str = URL, token: str = TOKEN, home: Path = HOME, as_json: bool = JSON) -> None:
    """A job's log (stdout and stderr of every attempt)."""
    client = _client(url, token, home)
    offset, chunks = 0, []
    while True:
        part = client.logs(job_id, offset)
        offset = part["offset"]
        if as_json:
            chunks.append(part["text"])
        elif part["text"]:
            print(part["text"], end="", flush=True)
        if not follow or part["done"]:
            break
        if not part["text"]:
            time.sleep(0.5)
    if as_json:
        _dump({"id": job_id, "text": "".join(chunks), "offset": offset})


def cancel(job_id: str = typer.Argument(...), url: str = URL, token: str = TOKEN, home: Path = HOME,
           as_json: bool = JSON) -> None:
    """Cancel a job (a running one gets SIGTERM, then SIGKILL after the grace period)."""
    result = _client(url, token, home).cancel(job_id)
    if as_json:
        _dump(result)
    elif result["cancel_requested"]:
        print(f"cancelling {job_id}")
    else:
        print(f"{job_id} is already {result['state']}")


def queue(url: str = URL, token: str = TOKEN, home: Path = HOME, as_json: bool = JSON) -> None:
    """Jobs waiting: position and estimated start (the scheduler core run forward from the live state, each job
    taking its `duration_s`, 1 h when it gives none)."""
    def cells(r: dict) -> tuple[str, ...]:
        wait = "-" if r["estimated_wait_s"] is None else f"{r['estimated_wait_s'] / 60:.1f} min"
        return (str(r["position"]), r["id"], r["team"], str(r["gpus"]), str(r["priority"]), r["state"],
                _when(r["estimated_start"]), wait, r["reason"][:50])

    _print(_client(url, token, home).queue(), as_json,
           ("#", "id", "team", "gpus", "priority", "state", "estimated start", "wait", "reason"), cells)


def nodes(url: str = URL, token: str = TOKEN, home: Path = HOME, as_json: bool = JSON) -> None:
    """The nodes: GPUs (or CPU slots), allocated, jobs, utilisation."""
    _print(_client(url, token, home).nodes(), as_json, ("node", "flavor", "allocated", "jobs", "CPU %", "memory %"),
           lambda r: (r["name"], r["flavor"], f"{r['allocated']}/{r['gpus']}", ", ".join(r["jobs"]),
                      f"{r['cpu_percent']:.0f}", f"{r['memory_percent']:.0f}"))


def usage(url: str = URL, token: str = TOKEN, home: Path = HOME, as_json: bool = JSON) -> None:
    """GPU-hours per team: allocated versus actually used (CPU slots: the CPU time of the jobs' processes)."""
    def cells(r: dict) -> tuple[str, ...]:
        used = "n/a" if r["used_gpu_h"] is None else f"{r['used_gpu_h']:.4f}"
        idle = "n/a" if r["idle_fraction"] is None else f"{100 * r['idle_fraction']:.0f}%"
        return r["team"], f"{r['allocated_gpu_h']:.4f}", used, idle

    _print(_client(url, token, home).usage(), as_json, ("team", "allocated GPU-h", "used GPU-h", "idle"), cells)


def register(app: typer.Typer) -> None:
    for fn in (up, submit, ls, show, logs, cancel, queue, nodes, usage):
        app.command(fn.__name__)(fn)
