"""The service's state in a real database through SQLAlchemy: a SQLite file in WAL mode by default,
PostgreSQL with `postgresql://...`. Everything the service knows is here, so a killed service restarts
from it (daemon.py reconciles what was running).

Tables:
  jobs         one row per job: its spec (the TOML as submitted and the parsed JSON), team, queue, state
  transitions  every lifecycle change: time, from, to, reason
  allocations  every time a job held GPUs: node, devices, process id, start/end, exit status
  usage        samples while jobs run: GPU-seconds allocated and actually used, per team
  scheduler    one row: the scheduler core's ClusterState as JSON, stored after every step, before acting
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from flopwise.errors import ConfigError

log = logging.getLogger(__name__)

# lifecycle states (the core's statuses map onto these in daemon.py)
QUEUED, ADMITTED, RUNNING = "queued", "admitted", "running"
SUCCEEDED, FAILED, CANCELLED, PREEMPTED = "succeeded", "failed", "cancelled", "preempted"
STATES = (QUEUED, ADMITTED, RUNNING, SUCCEEDED, FAILED, CANCELLED, PREEMPTED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

metadata = MetaData()
jobs = Table(
    "jobs", metadata,
    Column("id", String(128), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("team", String(128), nullable=False, index=True),
    Column("queue", String(128), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("priority", Integer, nullable=False, default=0),
    Column("gpus", Integer, nullable=False, default=1),
    Column("spec_toml", Text, nullable=False),  # as submitted
    Column("spec_json", Text, nullable=False),  # the parsed job (jobfile.JobRequest.to_dict)
    Column("state", String(16), nullable=False, index=True),
    Column("reason", Text, nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("submitted_to_core", Boolean, nullable=False, default=False),  # the core has seen its Submit
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("attempts", Integer, nullable=False, default=0),  # process launches
    Column("exit_code", Integer),
    Column("run_dir", Text, nullable=False),
)
transitions = Table(
    "transitions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(128), ForeignKey("jobs.id"), nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("from_state", String(16)),
    Column("to_state", String(16), nullable=False),
    Column("reason", Text, nullable=False, default=""),
)
allocations = Table(
    "allocations", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(128), ForeignKey("jobs.id"), nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    Column("node", String(128), nullable=False),
    Column("gpus", Integer, nullable=False),
    Column("devices", String(256), nullable=False, default=""),  # e.g. "0,1" (CUDA_VISIBLE_DEVICES)
    Column("pid", Integer),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("exit_code", Integer),
)
usage = Table(
    "usage", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(128), ForeignKey("jobs.id"), nullable=False, index=True),
    Column("team", String(128), nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("allocated_gpu_s", Float, nullable=False),
    Column("used_gpu_s", Float),  # None: not measurable (GPU without NVML)
)
node_data = Table(  # the datasets each node holds in its pipeline cache (the scheduler prefers those nodes)
    "node_data", metadata,
    Column("node", String(128), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("shard_dir", Text, nullable=False),
    Column("job_id", String(128), nullable=False),  # the job that prepared it
    Column("at", Float, nullable=False),
)
scheduler = Table(
    "scheduler", metadata,
    Column("id", Integer, primary_key=True),
    Column("state_json", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (the API) never block the loop's writes
    cur.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint of the WAL; safe against a killed process
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def database_url(db: str | None, home: Path) -> str:
    """`--db` as given (sqlite:///..., postgresql://...), or the SQLite file in the service's home."""
    if not db:
        return f"sqlite:///{(home / 'cluster.db').resolve()}"
    if db.startswith("postgresql://"):  # SQLAlchemy's default PostgreSQL driver is psycopg2; we ship psycopg 3
        return "postgresql+psycopg://" + db[len("postgresql://"):]
    if db.startswith(("sqlite:", "postgresql+")):
        return db
    raise ConfigError(f"--db {db!r}: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB")


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite"):
            self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        try:
            metadata.create_all(self.engine)
        except Exception as exc:  # a wrong URL, a server that is not there
            raise ConfigError(f"cannot open the database {self._safe_url()}: {exc.__class__.__name__}: {exc}") from None

    def _safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    # -- jobs -------------------------------------------------------------------------------------------
    def add_job(self, row: dict, now: float) -> bool:
        """Insert a new queued job with its first transition; False when the id exists (nothing changes)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(jobs).values(**row, state=QUEUED, reason="submitted", created_at=now,
                                                 updated_at=now, submitted_to_core=False, cancel_requested=False,
                                                 attempts=0))
                conn.execute(insert(transitions).values(job_id=row["id"], at=now, from_state=None, to_state=QUEUED,
                                                        reason="submitted"))
        except IntegrityError:
            return False
        return True

    def job(self, job_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        return dict(row) if row else None

    def jobs(self, team: str | None = None, states: Iterable[str] | None = None) -> list[dict]:
        q = select(jobs).order_by(jobs.c.created_at, jobs.c.id)
        if team is not None:
            q = q.where(jobs.c.team == team)
        if states is not None:
            q = q.where(jobs.c.state.in_(list(states)))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def unsubmitted(self) -> list[dict]:
        with self.engine.connect() as conn:
            q = select(jobs).where(jobs.c.submitted_to_core.is_(False)).order_by(jobs.c.created_at, jobs.c.id)
            return [dict(r) for r in conn.execute(q).mappings()]

    def cancel_requests(self) -> list[str]:
        q = select(jobs.c.id).where(jobs.c.cancel_requested.is_(True), jobs.c.state.not_in(list(TERMINAL)))
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(q)]

    def request_cancel(self, job_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(cancel_requested=True))

    def transitions(self, job_id: str) -> list[dict]:
        q = select(transitions).where(transitions.c.job_id == job_id).order_by(transitions.c.id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def allocations(self, job_id: str | None = None, open_only: bool = False) -> list[dict]:
        q = select(allocations).order_by(allocations.c.id)
        if job_id is not None:
            q = q.where(allocations.c.job_id == job_id)
        if open_only:
            q = q.where(allocations.c.ended_at.is_(None))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def usage_by_team(self, since: float = 0.0) -> dict[str, dict[str, float]]:
        q = (select(usage.c.team, func.sum(usage.c.allocated_gpu_s), func.sum(usage.c.used_gpu_s),
                    func.count(usage.c.used_gpu_s))
             .where(usage.c.at >= since).group_by(usage.c.team))
        with self.engine.connect() as conn:
            return {team: {"allocated_gpu_s": float(a or 0.0), "used_gpu_s": float(u) if n else None}
                    for team, a, u, n in conn.execute(q)}

    # -- the loop's writes: one transaction per step -------------------------------------------------------
    def begin(self):
        return self.engine.begin()

    @staticmethod
    def transition(conn: Connection, job: dict, to: str, reason: str, now: float, **fields) -> None:
        """Move a job to `to` (recorded with its time and reason); `job` is updated in place."""
        conn.execute(update(jobs).where(jobs.c.id == job["id"]).values(state=to, reason=reason, updated_at=now, **fields))
        conn.execute(insert(transitions).values(job_id=job["id"], at=now, from_state=job["state"], to_state=to,
                                                reason=reason))
        job.update(state=to, reason=reason, updated_at=now, **fields)

    @staticmethod
    def set_fields(conn: Connection, job_id: str, **fields) -> None:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(**fields))

    @staticmethod
    def open_allocation(conn: Connection, job_id: str, attempt: int, node: str, gpus: int, devices: str,
                        now: float) -> int:
        result = conn.execute(insert(allocations).values(job_id=job_id, attempt=attempt, node=node, gpus=gpus,
                                                         devices=devices, started_at=now))
        return int(result.inserted_primary_key[0])

    @staticmethod
    def set_pid(conn: Connection, job_id: str, attempt: int, pid: int) -> None:
        conn.execute(update(allocations).where(allocations.c.job_id == job_id, allocations.c.attempt == attempt)
                     .values(pid=pid))

    @staticmethod
    def close_allocations(conn: Connection, job_id: str, now: float, exit_code: int | None) -> None:
        conn.execute(update(allocations).where(allocations.c.job_id == job_id, allocations.c.ended_at.is_(None))
                     .values(ended_at=now, exit_code=exit_code))

    @staticmethod
    def add_usage(conn: Connection, job_id: str, team: str, now: float, allocated: float, used: float | None) -> None:
        conn.execute(insert(usage).values(job_id=job_id, team=team, at=now, allocated_gpu_s=allocated, used_gpu_s=used))

    # -- datasets on nodes ------------------------------------------------------------------------------------
    def node_data(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(node_data)).mappings()]

    def add_node_data(self, node: str, key: str, shard_dir: str, job_id: str, now: float) -> None:
        with self.engine.begin() as conn:
            done = conn.execute(update(node_data).where(node_data.c.node == node, node_data.c.key == key)
                                .values(shard_dir=shard_dir, job_id=job_id, at=now))
            if done.rowcount == 0:
                conn.execute(insert(node_data).values(node=node, key=key, shard_dir=shard_dir, job_id=job_id, at=now))

    # -- the scheduler core's state --------------------------------------------------------------------------
    def load_state_text(self) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(scheduler.c.state_json).where(scheduler.c.id == 1)).first()
        return row[0] if row else None

    def load_state(self) -> dict | None:
        text = self.load_state_text()
        return json.loads(text) if text else None

    @staticmethod
    def save_state(conn: Connection, state: dict, now: float) -> None:
        text = json.dumps(state)
        done = conn.execute(update(scheduler).where(scheduler.c.id == 1).values(state_json=text, updated_at=now))
        if done.rowcount == 0:
            conn.execute(insert(scheduler).values(id=1, state_json=text, updated_at=now))


def now_s() -> float:
    return time.time()
