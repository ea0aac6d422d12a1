"""Code verification: keep code only when its tests pass in a sandbox (flopwise.data.sandbox).

A record carries code and tests in the fields `code_field` and `tests_field` (JSONL `code` and `tests` by
default); a Python file whose text contains doctests (`>>> `) is run with doctest. Records with neither
are kept untouched (or dropped as `verify_no_tests` with require_tests = true). Many sandboxes run in
parallel (`parallel` threads per worker, each waiting on its own sandbox process).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from flopwise.config_values import check_number
from flopwise.data.sandbox import PASSED, SandboxLimits, run_sandboxed
from flopwise.data.stages.base import Stage, Verdict
from flopwise.errors import ConfigError

log = logging.getLogger(__name__)


class VerifyCode(Stage):
    type = "verify_code"
    defaults = {
        "code_field": "code",
        "tests_field": "tests",
        "doctests": True,
        "require_tests": False,
        "timeout_s": 5.0,
        "cpu_s": 5,
        "memory_mb": 1024,
        "file_size_mb": 16,
        "max_procs": 16,
        "parallel": 4,
        "network_namespace": True,
        "unprivileged": True,
    }

    def __init__(self, name, only_sources=None, **params):
        super().__init__(name, only_sources, **params)
        p = self.p
        if p["parallel"] < 1 or p["parallel"] > 64:
            raise ConfigError(f"verify_code.parallel = {p['parallel']}: must be in [1, 64]")
        if p["timeout_s"] <= 0:
            raise ConfigError(f"verify_code.timeout_s = {p['timeout_s']}: must be > 0")
        if p["cpu_s"] < 1:
            raise ConfigError(f"verify_code.cpu_s = {p['cpu_s']}: must be >= 1")
        for key in ("memory_mb", "file_size_mb", "max_procs"):  # a limit of 0 or below would remove it
            check_number(f"verify_code.{key}", p[key], low=1, integer=True)
        self.limits = SandboxLimits(
            timeout_s=float(p["timeout_s"]),
            cpu_s=int(p["cpu_s"]),
            memory_bytes=int(p["memory_mb"]) << 20,
            file_bytes=int(p["file_size_mb"]) << 20,
            max_procs=int(p["max_procs"]),
            network_namespace=bool(p["network_namespace"]),
            unprivileged=bool(p["unprivileged"]),
        )
        self._pool: ThreadPoolExecutor | None = None

    def _job(self, doc: dict):
        p = self.p
        code, tests = doc.get(p["code_field"]), doc.get(p["tests_field"])
        if isinstance(code, str) and isinstance(tests, str) and tests.strip():
            return code, tests, "tests"
        if p["doctests"] and ">>> " in doc["text"] and doc["id"].endswith(".py"):
            return doc["text"], "", "doctest"
        return None

    def judge(self, docs: list[dict]) -> list[Verdict]:
        """Run the batch's sandboxes in parallel, then give each document its verdict."""
        jobs = {}
        for i, doc in enumerate(docs):
            if self.applies(doc):
                job = self._job(doc)
                if job is not None:
                    jobs[i] = job
        results = {}
        if jobs:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=int(self.p["parallel"]))
            futures = {
                i: self._pool.submit(run_sandboxed, c, t, mode=m, limits=self.limits)
                for i, (c, t, m) in jobs.items()
            }
            results = {i: f.result() for i, f in futures.items()}
        extra = self.stats.extra
        events = extra.setdefault("events", [])
        verdicts: list[Verdict] = []
        for i, doc in enumerate(docs):
            res = results.get(i)
            if res is None:
                if self.applies(doc) and self.p["require_tests"]:
                    verdicts.append("verify_no_tests")
                    continue
                extra["not_applicable"] = extra.get("not_applicable", 0) + 1
                verdicts.append(None)
            elif res.status != PASSED:
                detail = res.detail[-200:]
                if len(events) < 50:
                    events.append({"id": doc["id"], "reason": res.status, "detail": detail})
                log.debug("verify: %s %s: %s", doc["id"], res.status, detail)
                verdicts.append((f"verify_{res.status}", res.detail[-2000:]))
            else:
                extra["passed"] = extra.get("passed", 0) + 1
                verdicts.append(None)
        return verdicts

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
