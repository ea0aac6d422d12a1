"""The cluster service's API and loop under load (issue 10): an in-process service on 127.0.0.1 with a SQLite
(WAL) database, driven over real sockets.

1. burst    N jobs submitted at once by C concurrent clients: every one accepted (201) and accounted (in the
            database and given to the scheduler core); the submit latency p50/p99/max; how long the loop takes
            to give them all to the core
2. list     GET /api/jobs and GET /api/queue with N jobs in the database: latency p50/p99
3. run      R `true` command jobs through the whole loop (admission, a runner process each, exit, success) on
            S CPU slots: jobs/s

    .venv/bin/python benchmarks/cluster_api.py                   # N=1000, C=16, R=100, S=4
    .venv/bin/python benchmarks/cluster_api.py --jobs 200 --run 20 --db postgresql://USER@127.0.0.1:PORT/DB

Writes benchmarks/results/cluster_api.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import sqlalchemy

from flopwise.atomic import atomic_write_json
from flopwise.cluster.service.daemon import ServiceOptions, local_cluster
from flopwise.cluster.service.server import start

HERE = Path(__file__).resolve().parent


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--run", type=int, default=100)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--db", default=None)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="flopwise-bench-cluster-"))
    tokens = home.parent / f"{home.name}-tokens.toml"
    tokens.write_text('admin = "bench-admin-token"\n[teams]\nbench = "bench-team-token"\n')
    options = ServiceOptions(policy="priority", tick_s=0.1, usage_every_s=5.0)
    running = start(home, cluster=local_cluster(gpus=0, slots=args.slots), options=options, tokens=tokens, db=args.db)
    url, local = running.url, threading.local()

    def session() -> requests.Session:
        if not hasattr(local, "s"):
            local.s = requests.Session()
            local.s.headers["Authorization"] = "Bearer bench-team-token"
        return local.s

    def submit(i: int) -> tuple[int, float]:
        job = {"id": f"burst-{i:05d}", "kind": "command", "gpus": 1, "duration_s": 60, "argv": ["sleep", "3600"]}
        t = time.perf_counter()
        r = session().post(url + "/api/jobs", json={"job": job}, timeout=120)
        return r.status_code, time.perf_counter() - t

    out: dict = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "cpus": os.cpu_count(),
                 "sqlalchemy": sqlalchemy.__version__, "db": running.service.store.engine.dialect.name,
                 "jobs": args.jobs, "clients": args.clients, "slots": args.slots}
    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(submit, range(args.jobs)))
        burst_s = time.perf_counter() - t0
        codes = [c for c, _ in results]
        lat = [dt * 1000 for _, dt in results]
        while running.service.store.unsubmitted():
            time.sleep(0.05)
        accounted_s = time.perf_counter() - t0
        store = running.service.store
        in_core = len(store.load_state()["jobs"])
        out["burst"] = {"accepted": codes.count(201), "other_status": len(codes) - codes.count(201),
                        "in_database": len(store.jobs()), "in_core": in_core, "wall_s": burst_s,
                        "submits_per_s": args.jobs / burst_s, "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
                        "max_ms": max(lat), "all_in_core_after_s": accounted_s}
        print(f"burst: {codes.count(201)}/{args.jobs} accepted in {burst_s:.2f} s ({args.jobs / burst_s:.0f}/s), "
              f"p50 {pct(lat, 0.5):.1f} ms, p99 {pct(lat, 0.99):.1f} ms; {in_core} in the core after {accounted_s:.2f} s")
        for path in ("/api/jobs", "/api/queue"):
            times = []
            for _ in range(10):
                t = time.perf_counter()
                r = session().get(url + path, timeout=120)
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200
            out[f"list {path}"] = {"rows": len(r.json()), "p50_ms": statistics.median(times), "p99_ms": max(times)}
            print(f"GET {path}: {len(r.json())} rows, p50 {statistics.median(times):.1f} ms, max {max(times):.1f} ms")
        admin = requests.Session()
        admin.headers["Authorization"] = "Bearer bench-admin-token"
        for i in range(args.jobs):
            admin.post(f"{url}/api/jobs/burst-{i:05d}/cancel", timeout=60)
        while store.jobs(states=["queued", "admitted", "running"]):
            time.sleep(0.1)
        t0 = time.perf_counter()
        for i in range(args.run):
            session().post(url + "/api/jobs", json={"job": {"id": f"run-{i:04d}", "kind": "command", "argv": ["true"]}},
                           timeout=60)
        while len(store.jobs(states=["succeeded"])) < args.run:
            time.sleep(0.05)
        run_s = time.perf_counter() - t0
        out["run"] = {"jobs": args.run, "wall_s": run_s, "jobs_per_s": args.run / run_s}
        print(f"run: {args.run} `true` jobs through the loop on {args.slots} slots in {run_s:.2f} s "
              f"({args.run / run_s:.1f} jobs/s)")
    finally:
        running.stop(kill_jobs=True)
    (HERE / "results").mkdir(exist_ok=True)
    atomic_write_json(HERE / "results" / "cluster_api.json", out)


if __name__ == "__main__":
    main()
