"""The service loop: the database (store.py) and the processes (executor.py) around the scheduler core.

Each tick gathers what happened (new jobs in the database, cancel requests, processes that ended), calls the
very core the simulator uses (`flopwise.cluster.Scheduler.step`), stores the core's state and every job's
transition in one transaction, and only then acts (start, SIGTERM, kill): a service killed at any point
restarts from the database and `recover` reconciles it with the processes (adopts those still running, takes
the exit status of those that ended meanwhile, treats the vanished ones as failed, so they restart by their
policy).

Core statuses map onto the lifecycle: Start -> admitted, then running once its process is launched (a start
waits while the devices it needs are still held by a job saving its checkpoint after a SIGTERM); Preempt ->
preempted (the process is sent SIGTERM, the trainer saves and exits with PREEMPTED_EXIT; the core queues the
job and a later Start resumes it with `--resume`); Requeue (failed, restarts left) -> queued after a backoff;
GiveUp, Reject -> failed; Finish -> succeeded; Cancel -> cancelled.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from flopwise.cluster import (
    Cancel,
    ClusterSpec,
    ClusterState,
    Fail,
    Finish,
    Flavor,
    GiveUp,
    NodeSpec,
    Preempt,
    Reject,
    Requeue,
    Resize,
    Scheduler,
    SchedulerOptions,
    Start,
    Stop,
    Submit,
    load_cluster,
)
from flopwise.cluster.service import store as st
from flopwise.cluster.service.executor import LOST, LocalExecutor
from flopwise.cluster.service.jobfile import JobRequest
from flopwise.cluster.service.prepare import PLACEHOLDER, substitute
from flopwise.cluster.state import CANCELLED as CORE_CANCELLED
from flopwise.cluster.state import FAILED as CORE_FAILED
from flopwise.cluster.state import REJECTED as CORE_REJECTED
from flopwise.cluster.state import SUCCEEDED as CORE_SUCCEEDED
from flopwise.train.preempt import PREEMPTED_EXIT

log = logging.getLogger(__name__)

_CORE_END = {CORE_SUCCEEDED: st.SUCCEEDED, CORE_FAILED: st.FAILED, CORE_CANCELLED: st.CANCELLED,
             CORE_REJECTED: st.FAILED}


def detect_gpus() -> int:
    """GPUs on this machine: FLOPWISE_CLUSTER_GPUS if set, else what `nvidia-smi -L` lists (0 without it)."""
    if os.environ.get("FLOPWISE_CLUSTER_GPUS"):
        return int(os.environ["FLOPWISE_CLUSTER_GPUS"])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def local_cluster(gpus: int | None = None, slots: int | None = None, queues: Path | None = None) -> ClusterSpec:
    """This machine as the only node: its GPUs (flavor `gpu`), or `slots` CPU slots (flavor `cpu`, default one
    per core) when it has none. `queues`: a cluster TOML whose [[queues]] and [[local_queues]] to use."""
    n = detect_gpus() if gpus is None else gpus
    flavor = "gpu" if n > 0 else "cpu"
    count = n if n > 0 else (slots or os.cpu_count() or 1)
    node = NodeSpec(socket.gethostname() or "localhost", flavor, count)
    if queues is None:
        return ClusterSpec.build({flavor: Flavor(flavor)}, (node,))
    spec = load_cluster(queues)
    return ClusterSpec.build({flavor: Flavor(flavor)}, (node,), spec.cluster_queues, spec.local_queues)


@dataclass
class ServiceOptions:
    policy: str = "priority"
    tick_s: float = 0.5
    grace_s: float = 30.0  # SIGTERM to SIGKILL
    backoff_base_s: float = 10.0
    backoff_max_s: float = 600.0
    usage_every_s: float = 10.0


class ClusterService:
    def __init__(self, home: Path, store: st.Store, cluster: ClusterSpec, options: ServiceOptions | None = None,
                 executor=None) -> None:
        self.home = Path(home)
        self.store = store
        self.cluster = cluster
        self.options = options or ServiceOptions()
        core_opts = SchedulerOptions(backoff_base_s=self.options.backoff_base_s, backoff_max_s=self.options.backoff_max_s)
        self.sched = Scheduler(cluster, self.options.policy, options=core_opts)
        # LocalExecutor, or ray_executor.RayExecutor: start/adopt/poll/terminate/kill/running/cpu_seconds/job_dir
        self.executor = executor or LocalExecutor(self.home, self.options.grace_s)
        self.local = isinstance(self.executor, LocalExecutor)
        saved = store.load_state()
        self.state: ClusterState = ClusterState.from_dict(saved) if saved else self.sched.new_state()
        self.pending: dict[str, Start | Resize] = {}  # decided, not launched yet (devices still draining)
        self.devices = {n.name: n.gpus for n in cluster.nodes}
        self._last_usage = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0
        self._deferred: list = []  # events found while acting, for the next step
        self._wake: float | None = None  # the core's wake_at
        self.data_keys: dict[str, str] = {}  # job -> its dataset's cache key
        self._shards: dict[str, str] = {}  # job -> the shard directory it starts with (data already on its node)
        self.data_on: dict[str, dict[str, str]] = {}  # key -> node -> shard directory there
        for row in store.node_data():
            self.data_on.setdefault(row["key"], {})[row["node"]] = row["shard_dir"]
        for row in store.jobs(states=[st.QUEUED, st.ADMITTED, st.RUNNING, st.PREEMPTED]):
            key = json.loads(row["spec_json"]).get("data_key")
            if key:
                self.data_keys[row["id"]] = key
        self.sched.locality = lambda job: self.data_on.get(self.data_keys.get(job.name, ""), {}).keys()
        self._dirty = True  # step at the first tick (a restart may find backoffs due)

    # -- start-up --------------------------------------------------------------------------------------------
    def recover(self) -> list:
        """Reconcile the stored state with the processes after a restart; returns the events it implies."""
        events = []
        for alloc in self.store.allocations(open_only=True):
            job = alloc["job_id"]
            if job in self.executor.procs:
                continue
            if not self.executor.adopt(job, alloc["attempt"], alloc["pid"]):
                row = self.store.job(job)
                with self.store.begin() as conn:
                    self.store.close_allocations(conn, job, time.time(), LOST)
                if row and row["state"] in (st.RUNNING, st.ADMITTED) and row["attempts"] == alloc["attempt"]:
                    log.warning("job %s: its process is gone (service restarted); failing it for a restart", job)
                    events.append(Fail(job, "process lost while the service was down"))
            else:
                row = self.store.job(job)
                if row and row["state"] in (st.PREEMPTED, st.CANCELLED):
                    self.executor.terminate(job)  # was being stopped when the service died
        for row in self.store.jobs(states=[st.ADMITTED]):
            core = self.state.jobs.get(row["id"])
            if row["id"] not in self.executor.procs and core is not None and core.placement:
                self.pending[row["id"]] = Start(row["id"], core.flavor or "", core.placement, core.gpus,
                                                row["attempts"] > 0)
        return events

    # -- the loop ----------------------------------------------------------------------------------------------
    def tick(self, extra_events: list | None = None) -> None:
        now = max(time.time(), self.state.now)
        events = [*self._deferred, *(extra_events or [])]
        self._deferred = []
        new = self.store.unsubmitted()
        for row in new:
            request = JobRequest.from_dict(json.loads(row["spec_json"]))
            if request.data_key:
                self.data_keys[request.id] = request.data_key
            events.append(Submit(request.spec))
        arriving = {row["id"] for row in new}
        for job in self.store.cancel_requests():  # after the Submits: a job cancelled as it arrives never runs
            if job in arriving or job in self.state.active:
                events.append(Cancel(job))
        ended = self.executor.poll()
        for job, attempt, code in ended:
            self._record_data(job, now)
            row = self.store.job(job)
            if row is None or attempt != row["attempts"]:
                continue
            if row["state"] == st.RUNNING:
                if code == 0:
                    events.append(Finish(job))
                else:
                    why = "exit 143 (SIGTERM from outside the service)" if code == PREEMPTED_EXIT else f"exit {code}"
                    events.append(Fail(job, why if code != LOST else "process lost"))
        due = self._wake is not None and now >= self._wake
        if not (events or ended or due or self._dirty or self.sched.policy.periodic(self.state)):
            self._launch_pending(now)  # nothing for the core (its contract: step on events and at wake_at)
            self._maybe_sample(now)
            self.ticks += 1
            return
        self._dirty = False
        rows = {r["id"]: r for r in self.store.jobs(states=[st.ADMITTED, st.RUNNING, st.PREEMPTED, st.QUEUED])}
        result = self.sched.step(self.state, now, events)
        self._wake = result.wake_at
        changed = bool(events or result.decisions)
        act: list = []
        with self.store.begin() as conn:
            if changed:
                self.store.save_state(conn, self.state.to_dict(), now)
            for row in new:
                self.store.set_fields(conn, row["id"], submitted_to_core=True)
            for job, _attempt, code in ended:
                self.store.close_allocations(conn, job, now, code)
                self.store.set_fields(conn, job, exit_code=code)
            for d in result.decisions:
                row = rows.get(d.job) or self.store.job(d.job)
                if row is None:
                    continue
                rows[d.job] = row
                if isinstance(d, Start | Resize):
                    why = "admitted on " + ", ".join(f"{n}:{g}" for n, g in d.placement)
                    if isinstance(d, Resize):
                        act.append(("stop", d.job))
                        why = f"resized {d.from_gpus} -> {d.gpus}: " + why
                    elif d.resume:
                        why += " (resumes from its checkpoint)"
                    self.store.transition(conn, row, st.ADMITTED, why, now)
                    self.pending[d.job] = d
                elif isinstance(d, Preempt):
                    self.store.transition(conn, row, st.PREEMPTED, d.reason, now)
                    self.pending.pop(d.job, None)
                    act.append(("stop", d.job))
                elif isinstance(d, Stop):
                    self.store.transition(conn, row, st.CANCELLED, d.reason, now)
                    self.pending.pop(d.job, None)
                    act.append(("stop", d.job))
                elif isinstance(d, Requeue):
                    self.store.transition(conn, row, st.QUEUED, self.state.jobs[d.job].reason, now)
                elif isinstance(d, GiveUp):
                    self.store.transition(conn, row, st.FAILED, d.reason, now)
                elif isinstance(d, Reject):
                    self.store.transition(conn, row, st.FAILED, f"rejected: {d.reason}", now)
            for job_id, row in rows.items():  # ends the core decided without a decision: finish, cancel of a queued job
                core = self.state.jobs.get(job_id)
                if core is None or core.status not in _CORE_END:
                    continue
                to = _CORE_END[core.status]
                if row["state"] != to and row["state"] not in st.TERMINAL:
                    self.store.transition(conn, row, to, core.reason or core.status, now)
        self._maybe_sample(now)
        for what, job in act:
            if what == "stop":
                self.executor.terminate(job)
        self._launch_pending(now)
        self.ticks += 1

    def _record_data(self, job: str, now: float) -> None:
        """The job prepared its dataset on its node(s): remember it (the next job on that data skips preparing)."""
        record = self.executor.job_dir(job) / "data.json"
        if not record.is_file():
            return
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            return
        for alloc in self.store.allocations(job):
            if self.data_on.get(data["key"], {}).get(alloc["node"]) != data["shard_dir"]:
                self.store.add_node_data(alloc["node"], data["key"], data["shard_dir"], job, now)
                self.data_on.setdefault(data["key"], {})[alloc["node"]] = data["shard_dir"]

    def _maybe_sample(self, now: float) -> None:
        if now - self._last_usage >= self.options.usage_every_s:
            rows = {r["id"]: r for r in self.store.jobs(states=[st.RUNNING])}
            with self.store.begin() as conn:
                self._sample_usage(conn, rows, now)

    def _sample_usage(self, conn, rows: dict, now: float) -> None:
        dt = now - self._last_usage
        self._last_usage = now
        for job, proc in self.executor.running().items():
            row = rows.get(job)
            core = self.state.jobs.get(job)
            if row is None or core is None or row["state"] != st.RUNNING:
                continue
            gpus = core.gpus
            span = min(dt, now - proc.started)
            before = proc.cpu_s
            cpu = self.executor.cpu_seconds(job)
            used = None
            if self._flavor() == "cpu" and cpu is not None:
                used = min(max(cpu - before, 0.0), gpus * span)  # a CPU slot is used when its process computes
            self.store.add_usage(conn, job, row["team"], now, gpus * span, used)

    def _flavor(self) -> str:
        return next(iter(self.cluster.flavors))

    def _free_devices(self) -> dict[str, list[int]]:
        held: dict[str, set[int]] = {}
        for alloc in self.store.allocations(open_only=True):
            for dev in filter(None, alloc["devices"].split(",")):
                held.setdefault(alloc["node"], set()).add(int(dev))
        return {node: [i for i in range(n) if i not in held.get(node, set())] for node, n in self.devices.items()}

    def _launch_pending(self, now: float) -> None:
        if not self.pending:
            return
        free = self._free_devices()
        for job, d in list(self.pending.items()):
            if job in self.executor.procs:  # a resize: the old attempt is still saving its checkpoint
                continue
            if any(len(free.get(node, [])) < k for node, k in d.placement):
                continue  # a preempted job still holds these devices while it saves its checkpoint
            row = self.store.job(job)
            if row is None or row["state"] != st.ADMITTED:
                self.pending.pop(job)
                continue
            devices = {node: [free[node].pop(0) for _ in range(k)] for node, k in d.placement}
            attempt = row["attempts"] + 1
            request = JobRequest.from_dict(json.loads(row["spec_json"]))
            argv = self.command(request, job, resume=attempt > 1, nodes=[n for n, _ in d.placement])
            env = {"FLOPWISE_JOB_ID": job, "FLOPWISE_JOB_DIR": str(self.executor.job_dir(job)),
                   "FLOPWISE_JOB_ATTEMPT": str(attempt)}
            if job in self._shards:  # its data is already on the node (else prepare.py sets this)
                env["FLOPWISE_DATA_SHARDS"] = self._shards.pop(job)
            devs = next(iter(devices.values()))
            if self.local and self._flavor() == "gpu":  # (Ray sets it for its own GPU resource)
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devs))
            with self.store.begin() as conn:
                for n, ds in devices.items():
                    self.store.open_allocation(conn, job, attempt, n, len(ds), ",".join(map(str, ds)), now)
                self.store.set_fields(conn, job, attempts=attempt)
            self.pending.pop(job)
            try:
                pid = self.executor.start(job, attempt, argv, request.workdir, env, d.placement)
            except OSError as exc:
                log.error("job %s: cannot start: %s", job, exc)
                with self.store.begin() as conn:
                    self.store.close_allocations(conn, job, now, 127)
                    self.store.transition(conn, row, st.RUNNING, f"start failed: {exc}", now, attempts=attempt)
                self._deferred.append(Fail(job, f"cannot start: {exc}"))
                continue
            with self.store.begin() as conn:
                self.store.set_pid(conn, job, attempt, pid)
                self.store.transition(conn, row, st.RUNNING, f"attempt {attempt}, pid {pid}", now, attempts=attempt)

    def command(self, request: JobRequest, job: str, resume: bool, nodes: list[str] = ()) -> list[str]:
        """The argument list a job runs (never a shell). A job naming a dataset first prepares it on its node
        (prepare.py), unless every node it runs on already holds it."""
        kind = request.spec.kind
        flopwise = [sys.executable, "-m", "flopwise.cli"]
        if kind == "train":
            argv = [*flopwise, "train", "--out", str(self.executor.job_dir(job) / "out")]
            if request.config:
                argv += ["--config", request.config]
            argv += list(request.args)
            if request.data:
                argv += ["--set", f'data.shards="{PLACEHOLDER}"']
            if resume:
                argv.append("--resume")
        elif kind == "data":
            argv = [*flopwise, "data", "run", str(request.config), *request.args]
        else:
            argv = list(request.argv)
        if not request.data:
            return argv
        held = self.data_on.get(request.data_key or "", {})
        dirs = {held.get(n) for n in nodes}
        if nodes and None not in dirs and len(dirs) == 1 and all(Path(d).is_dir() for d in dirs):
            shards = dirs.pop()
            log.info("job %s: data %s already on %s", job, request.data_key, ", ".join(nodes))
            self.executor.job_dir(job).mkdir(parents=True, exist_ok=True)
            self._shards[job] = shards
            with open(self.executor.job_dir(job) / "log.txt", "ab") as fh:
                fh.write(f"data {request.data_key} already on this node: {shards}\n".encode())
            return substitute(argv, shards)
        record = str(self.executor.job_dir(job) / "data.json")
        return [sys.executable, "-m", "flopwise.cluster.service.prepare", request.data, record, "--", *argv]

    # -- running in a thread -----------------------------------------------------------------------------------
    def start(self) -> None:
        events = self.recover()
        self.tick(events)
        self._thread = threading.Thread(target=self._run, name="flopwise-cluster-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.options.tick_s):
            try:
                self.tick()
            except Exception:  # one bad tick must not stop the service; the next one retries from the database
                log.exception("cluster loop: tick failed")

    def stop(self, kill_jobs: bool = False) -> None:
        """Stop the loop. The jobs keep running (a later service adopts them) unless `kill_jobs`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if kill_jobs:
            for job in list(self.executor.procs):
                self.executor.kill(job)
            deadline = time.time() + 10
            while self.executor.procs and time.time() < deadline:
                self.executor.poll()
                time.sleep(0.05)
