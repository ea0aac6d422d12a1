"""The code-verification stage: keep code only when its tests pass in a sandbox.

A record carries code and tests in the fields `code_field` and `tests_field` (JSONL `code` and `tests` by
default); a Python file whose text contains doctests (`>>> `) is run with doctest. Records with neither
are kept untouched (or dropped as `verify_no_tests` with require_tests = true). Many sandboxes run in
parallel (`parallel` threads per worker, each waiting on its own sandbox process).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from flopwise.data.sandbox import PASSED, SandboxLimits, run_sandboxed
from flopwise.data.sources import text_bytes
from flopwise.data.stages import Stage
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
        if p["timeout_s"] <= 0 or p["cpu_s"] < 1:
            raise ConfigError("verify_code.timeout_s must be > 0 and cpu_s >= 1")
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

    def process(self, docs: list[dict]) -> list[dict]:
        st = self.stats
        jobs = {}
        for i, doc in enumerate(docs):
            if self.applies(doc):
                job = self._job(doc)
                if job is not None:
                    jobs[i] = job
        if jobs:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=int(self.p["parallel"]))
            futures = {
                i: self._pool.submit(run_sandboxed, c, t, mode=m, limits=self.limits)
                for i, (c, t, m) in jobs.items()
            }
            results = {i: f.result() for i, f in futures.items()}
        else:
            results = {}
        out = []
        events = st.extra.setdefault("events", [])
        for i, doc in enumerate(docs):
            nb = text_bytes(doc["text"])
            st.docs_in += 1
            st.bytes_in += nb
            res = results.get(i)
            if res is None:
                if self.applies(doc) and self.p["require_tests"]:
                    st.drops["verify_no_tests"] += 1
                    continue
                st.extra["not_applicable"] = st.extra.get("not_applicable", 0) + 1
            elif res.status != PASSED:
                st.drops[f"verify_{res.status}"] += 1
                if len(events) < 50:
                    events.append({"id": doc["id"], "reason": res.status, "detail": res.detail[-200:]})
                log.debug("verify: %s %s: %s", doc["id"], res.status, res.detail[-200:])
                continue
            else:
                st.extra["passed"] = st.extra.get("passed", 0) + 1
            st.docs_out += 1
            st.bytes_out += nb
            out.append(doc)
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
