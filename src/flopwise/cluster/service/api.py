"""The REST API (FastAPI; OpenAPI docs at /docs) the CLI and the web page use. Bearer tokens: one per team and
an admin token. A team sees and cancels only its own jobs (403 otherwise); no or an unknown token, 401. A bad
job file is a 400 with the one-line message naming the key. The API only reads and writes the database; the
loop (daemon.py) does the rest, so a request never waits on a job.

  POST /api/jobs               {"toml": "..."} or {"job": {...}}   -> 201 {"id", "created": true} (200: same id, same job)
  GET  /api/jobs[?state=]      the caller's jobs (admin: all)
  GET  /api/jobs/{id}          the job, its transitions and allocations
  GET  /api/jobs/{id}/logs     ?offset=N: its log from byte N -> {"text", "offset", "done"}
  POST /api/jobs/{id}/cancel
  GET  /api/queue              queued jobs: position and estimated start (estimate.py)
  GET  /api/nodes, /api/usage, /api/whoami;  GET /metrics (Prometheus);  GET / (the web page)
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from fastapi import Body, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from flopwise.atomic import atomic_write_text
from flopwise.cluster.service import store as st
from flopwise.cluster.service.daemon import ClusterService
from flopwise.cluster.service.estimate import estimate_starts
from flopwise.cluster.service.jobfile import JobRequest, job_from_table, parse_job
from flopwise.cluster.service.page import PAGE
from flopwise.cluster.service.prepare import data_key
from flopwise.errors import ConfigError, FlopwiseError

ADMIN = "admin"
LOG_CHUNK = 256 * 1024


@dataclass
class Tokens:
    teams: dict[str, str] = field(default_factory=dict)  # team -> token
    admin: str = ""

    def who(self, token: str) -> str | None:
        if self.admin and secrets.compare_digest(token, self.admin):
            return ADMIN
        for team, tok in self.teams.items():
            if secrets.compare_digest(token, tok):
                return team
        return None

    @classmethod
    def load(cls, path: Path) -> Tokens:
        """tokens.toml: `admin = "..."` and a [teams] table of team = token."""
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read tokens file {path}: {exc}") from None
        teams = data.get("teams", {})
        if not isinstance(teams, dict) or not all(isinstance(v, str) and len(v) >= 8 for v in teams.values()):
            raise ConfigError(f"tokens file {path}: [teams] must map team names to tokens of 8 characters or more")
        if ADMIN in teams:
            raise ConfigError(f"tokens file {path}: a team cannot be named {ADMIN!r}")
        admin = data.get("admin", "")
        if not isinstance(admin, str):
            raise ConfigError(f"tokens file {path}: admin must be a string")
        return cls(dict(teams), admin)

    @classmethod
    def create(cls, path: Path, teams: tuple[str, ...] = ("default",)) -> Tokens:
        tokens = cls({t: secrets.token_urlsafe(24) for t in teams}, secrets.token_urlsafe(24))
        lines = [f'admin = "{tokens.admin}"', "", "[teams]", *(f'{t} = "{v}"' for t, v in tokens.teams.items())]
        atomic_write_text(path, "\n".join(lines) + "\n", mode=0o600)  # never readable by others, even briefly
        return tokens


def _public(row: dict) -> dict:
    out = {k: row[k] for k in ("id", "name", "team", "queue", "kind", "priority", "gpus", "state", "reason",
                               "created_at", "updated_at", "attempts", "exit_code")}
    out["cancel_requested"] = bool(row["cancel_requested"])
    return out


def create_app(service: ClusterService, tokens: Tokens) -> FastAPI:
    store = service.store
    app = FastAPI(title="flopwise cluster", description="Submit, queue, run and watch jobs on a shared pool.")

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=400)

    def caller(request: Request) -> str:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            raise HTTPException(401, "missing bearer token (Authorization: Bearer TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})
        who = tokens.who(header[7:].strip())
        if who is None:
            raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
        return who

    def own_job(request: Request, job_id: str) -> tuple[str, dict]:
        who = caller(request)
        row = store.job(job_id)
        if row is None:
            raise HTTPException(404, f"no job {job_id!r}")
        if who != ADMIN and row["team"] != who:
            raise HTTPException(403, f"job {job_id} belongs to team {row['team']}")
        return who, row

    @app.post("/api/jobs", status_code=201)
    def submit(request: Request, body: Any = Body(None)):  # a plain def: FastAPI runs it in its thread pool
        who = caller(request)
        if not isinstance(body, dict) or not ({"toml", "job"} & set(body)):
            raise HTTPException(400, "body: expected JSON {\"toml\": \"...\"} or {\"job\": {...}}")
        team = who
        if who == ADMIN:
            team = body.get("team", ADMIN)
            if not isinstance(team, str) or not team:
                raise HTTPException(400, "team: must be a team name")
        try:
            if "toml" in body:
                if not isinstance(body["toml"], str):
                    raise ConfigError("toml: must be the job file's text")
                req = parse_job(body["toml"], team)
                text = body["toml"]
            else:
                if not isinstance(body["job"], dict):
                    raise ConfigError("job: must be a table of job fields")
                req = job_from_table(body["job"], team)
                text = json.dumps(body["job"])
            _check_runnable(req, service)
            if req.data is not None:
                if not Path(req.data).is_file():
                    raise ConfigError(f"data = {req.data!r}: no such pipeline file on the service's machine")
                req = dataclasses.replace(req, data_key=data_key(req.data))
        except FlopwiseError as exc:
            raise HTTPException(400, str(exc)) from None
        spec_json = json.dumps(req.to_dict(), sort_keys=True)
        row = {"id": req.id, "name": req.name, "team": team, "queue": req.spec.queue, "kind": req.spec.kind,
               "priority": req.spec.priority, "gpus": req.spec.gpus, "spec_toml": text, "spec_json": spec_json,
               "run_dir": str(service.executor.job_dir(req.id))}
        if store.add_job(row, time.time()):
            return {"id": req.id, "created": True, "state": st.QUEUED}
        old = store.job(req.id)
        if old is not None and old["team"] == team and old["spec_json"] == spec_json:
            return JSONResponse({"id": req.id, "created": False, "state": old["state"]}, status_code=200)
        raise HTTPException(409, f"id {req.id!r} is taken by a different job")

    @app.get("/api/jobs")
    def list_jobs(request: Request, state: str | None = None):
        who = caller(request)
        if state is not None and state not in st.STATES:
            raise HTTPException(400, f"state = {state!r}: must be one of {', '.join(st.STATES)}")
        rows = store.jobs(None if who == ADMIN else who, [state] if state else None)
        return JSONResponse([_public(r) for r in rows])  # plain JSON: FastAPI's encoder is slow on long lists

    @app.get("/api/jobs/{job_id}")
    def show(request: Request, job_id: str):
        _, row = own_job(request, job_id)
        out = _public(row)
        out["spec"] = json.loads(row["spec_json"])
        out["spec_toml"] = row["spec_toml"]
        out["transitions"] = store.transitions(job_id)
        out["allocations"] = store.allocations(job_id)
        out["metrics"] = _metrics_tail(Path(row["run_dir"]) / "out" / "metrics.jsonl")
        return out

    @app.get("/api/jobs/{job_id}/logs")
    def logs(request: Request, job_id: str, offset: int = 0):
        _, row = own_job(request, job_id)
        path = Path(row["run_dir"]) / "log.txt"
        text, end = "", max(offset, 0)
        if path.is_file():
            with open(path, "rb") as fh:
                fh.seek(end)
                data = fh.read(LOG_CHUNK)
            text, end = data.decode("utf-8", errors="replace"), end + len(data)
        done = row["state"] in st.TERMINAL and not (path.is_file() and path.stat().st_size > end)
        return {"text": text, "offset": end, "done": done, "state": row["state"]}

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(request: Request, job_id: str):
        _, row = own_job(request, job_id)
        if row["state"] in st.TERMINAL:
            return {"id": job_id, "state": row["state"], "cancel_requested": False}
        store.request_cancel(job_id)
        return {"id": job_id, "state": row["state"], "cancel_requested": True}

    @app.get("/api/queue")
    def queue(request: Request):
        who = caller(request)
        return JSONResponse(queue_view(service, None if who == ADMIN else who))

    @app.get("/api/nodes")
    def nodes(request: Request):
        caller(request)
        return nodes_view(service)

    @app.get("/api/usage")
    def usage(request: Request):
        who = caller(request)
        rows = usage_view(store)
        return rows if who == ADMIN else [r for r in rows if r["team"] == who]

    @app.get("/api/whoami")
    def whoami(request: Request):
        return {"team": caller(request)}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics():
        counts: dict[str, int] = {s: 0 for s in st.STATES}
        for row in store.jobs():
            counts[row["state"]] += 1
        lines = ["# HELP flopwise_cluster_jobs Jobs by lifecycle state.", "# TYPE flopwise_cluster_jobs gauge"]
        lines += [f'flopwise_cluster_jobs{{state="{s}"}} {n}' for s, n in counts.items()]
        lines += ["# HELP flopwise_cluster_gpus_allocated GPUs (CPU slots) allocated per node.",
                  "# TYPE flopwise_cluster_gpus_allocated gauge"]
        lines += [f'flopwise_cluster_gpus_allocated{{node="{n["name"]}"}} {n["allocated"]}' for n in nodes_view(service)]
        lines += _utilisation_lines()
        lines += ["# HELP flopwise_cluster_job_tokens_per_s A running training job's last logged throughput.",
                  "# TYPE flopwise_cluster_job_tokens_per_s gauge",
                  "# HELP flopwise_cluster_job_mfu A running training job's last logged model FLOPs utilisation.",
                  "# TYPE flopwise_cluster_job_mfu gauge"]
        for row in store.jobs(None, ["running"]):
            last = _last_step(Path(row["run_dir"]) / "out" / "metrics.jsonl")
            labels = f'job="{row["id"]}",team="{row["team"]}"'
            for key in ("tokens_per_s", "mfu"):
                if isinstance(last.get(key), (int, float)):
                    lines.append(f"flopwise_cluster_job_{key}{{{labels}}} {last[key]}")
        return "\n".join(lines) + "\n"

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE

    return app


def _check_runnable(req: JobRequest, service: ClusterService) -> None:
    cluster = service.cluster
    if req.spec.queue not in cluster.local_queues:
        raise ConfigError(f"queue = {req.spec.queue!r}: not a queue of this cluster; "
                          f"queues: {', '.join(cluster.local_queues)}")
    if req.config is not None and not Path(req.config).is_absolute():
        raise ConfigError(f"config = {req.config!r}: must be an absolute path (the CLI makes it so)")
    if req.config is not None and not Path(req.config).is_file():
        raise ConfigError(f"config = {req.config!r}: no such file on the service's machine")


def _last_step(path: Path, window: int = 65536) -> dict:
    """The newest step record of a metrics.jsonl, reading only its tail (a long run's file is large)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(fh.seek(0, os.SEEK_END) - window, 0))
            lines = fh.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn line, or the first (cut) line of the window
        if isinstance(rec, dict) and "loss" in rec and "event" not in rec:
            return rec
    return {}


def _utilisation_lines() -> list[str]:
    """This machine's utilisation: CPU through psutil; each GPU through NVML when nvidia-ml-py and a driver are
    there (the embedded service's node is this machine; Ray nodes report through Ray's own dashboard)."""
    lines = ["# HELP flopwise_cluster_node_cpu_utilisation This machine's CPU use since the last scrape (0-1).",
             "# TYPE flopwise_cluster_node_cpu_utilisation gauge",
             f"flopwise_cluster_node_cpu_utilisation {psutil.cpu_percent(interval=None) / 100:.4f}"]
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no package, no driver, no GPU: nothing to report
        return lines
    try:
        lines += ["# HELP flopwise_cluster_gpu_utilisation Each GPU's busy fraction over NVML's last sample (0-1).",
                  "# TYPE flopwise_cluster_gpu_utilisation gauge"]
        for i in range(pynvml.nvmlDeviceGetCount()):
            rates = pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(i))
            lines.append(f'flopwise_cluster_gpu_utilisation{{gpu="{i}"}} {rates.gpu / 100:.2f}')
    finally:
        pynvml.nvmlShutdown()
    return lines


def _metrics_tail(path: Path, limit: int = 500) -> list[dict]:
    """The last `limit` training records (step, loss, tokens/s, MFU) of a train job, for the page's chart."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines()[-limit:]:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "loss" in rec:
            rows.append({k: rec.get(k) for k in ("step", "loss", "tokens_per_s", "mfu", "eval_loss")})
    return rows


_estimates: dict = {}  # (service, state text, new jobs) -> (computed at, starts)
ESTIMATE_TTL_S = 10.0


def queue_view(service: ClusterService, team: str | None) -> list[dict]:
    now = time.time()
    text = service.store.load_state_text()
    unsubmitted = service.store.unsubmitted()
    key = (id(service), hash(text), tuple(r["id"] for r in unsubmitted))
    cached = _estimates.get(key)
    if cached is not None and now - cached[0] < ESTIMATE_TTL_S:
        starts = cached[1]  # the same state gives the same (absolute) estimates
    else:
        new = [JobRequest.from_dict(json.loads(r["spec_json"])).spec for r in unsubmitted]
        starts = estimate_starts(service.cluster, service.options.policy, json.loads(text) if text else None, now, new)
        _estimates.clear()
        _estimates[key] = (time.time(), starts)  # (the computation itself may take seconds with 1,000s queued)
    rows = [r for r in service.store.jobs(team, [st.QUEUED, st.PREEMPTED, st.ADMITTED])]
    rows.sort(key=lambda r: (r["state"] != st.ADMITTED, starts.get(r["id"], float("inf")), r["created_at"]))
    out = []
    for pos, row in enumerate(rows, 1):
        at = now if row["state"] == st.ADMITTED else starts.get(row["id"])
        out.append({**_public(row), "position": pos, "estimated_start": at,
                    "estimated_wait_s": None if at is None else max(0.0, at - now)})
    return out


def nodes_view(service: ClusterService) -> list[dict]:
    allocs = service.store.allocations(open_only=True)
    cpu = psutil.cpu_percent(interval=None)
    mem = psutil.virtual_memory().percent
    out = []
    for node in service.cluster.nodes:
        mine = [a for a in allocs if a["node"] == node.name]
        out.append({"name": node.name, "flavor": node.flavor, "gpus": node.gpus,
                    "allocated": sum(a["gpus"] for a in mine), "jobs": sorted({a["job_id"] for a in mine}),
                    "cpu_percent": cpu, "memory_percent": mem})
    return out


def usage_view(store: st.Store) -> list[dict]:
    rows = []
    for team, u in sorted(store.usage_by_team().items()):
        alloc, used = u["allocated_gpu_s"] / 3600, u["used_gpu_s"]
        rows.append({"team": team, "allocated_gpu_h": alloc, "used_gpu_h": None if used is None else used / 3600,
                     "idle_fraction": None if used is None or alloc <= 0 else max(0.0, 1 - used / 3600 / alloc)})
    return rows
