"""Run untrusted code and its tests in a contained subprocess.

Containment, layer by layer:
  - its own session and process group (start_new_session); at the wall-clock timeout the whole group is
    killed, and so is every process left running under the sandbox's uid (catches escapes via setsid);
  - resource limits (setrlimit): CPU seconds, address space, file size, process count, open files, no core;
  - an unprivileged uid unique to this sandbox (when we run as root: root ignores RLIMIT_NPROC, so the
    fork limit only holds for another uid), no supplementary groups: it cannot write files it does not own,
    read root's files, or signal our processes;
  - a fresh temporary working directory, owned by that uid, deleted afterwards;
  - no network: a new network namespace (when the kernel allows; we test it), and the audit hook refuses
    socket creation in any case;
  - a minimal environment (PATH, HOME, TMPDIR, LANG): nothing inherited, so no secrets;
  - a Python audit hook in the child refusing writes outside its directory, signals and ctypes (a second
    line behind the uid, and the only one when not root).
Not covered: a pids/memory cgroup (RLIMIT_AS bounds memory per process, NPROC the count of processes).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from flopwise.config_values import check_number

log = logging.getLogger(__name__)
RUNNER = Path(__file__).with_name("_sandbox_runner.py")
UID_BASE = 100_000

PASSED, FAILED, TIMEOUT, CRASHED, RESOURCE, VIOLATION = (
    "passed",
    "failed",
    "timeout",
    "crashed",
    "resource_limit",
    "sandbox_violation",
)


@dataclass
class SandboxLimits:
    timeout_s: float = 5.0  # wall clock
    cpu_s: int = 5
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    max_procs: int = 16
    network_namespace: bool = True
    unprivileged: bool = True

    def __post_init__(self) -> None:  # a limit of 0, below 0 or NaN would switch the limit off, not tighten it
        check_number("sandbox timeout_s", self.timeout_s, low=0, low_open=True)
        for key in ("cpu_s", "memory_bytes", "file_bytes", "max_procs"):
            check_number(f"sandbox {key}", getattr(self, key), low=1, integer=True)


@dataclass
class SandboxResult:
    status: str
    detail: str = ""
    seconds: float = 0.0


_slot_lock = threading.Lock()
_slots_free: list[int] = list(range(64))


def _take_slot() -> int:
    with _slot_lock:
        if not _slots_free:
            raise RuntimeError("more than 64 concurrent sandboxes in one process")
        return _slots_free.pop()


def _give_slot(slot: int) -> None:
    with _slot_lock:
        _slots_free.append(slot)


@functools.cache
def sandbox_python() -> str:
    """An interpreter an unprivileged uid can execute (ours may live under root's home, mode 700)."""
    candidates = [
        os.path.realpath(sys.executable),
        getattr(sys, "_base_executable", ""),
        "/usr/bin/python3",
        "/usr/local/bin/python3",
    ]
    if os.geteuid() != 0:
        return candidates[0]
    for c in candidates:
        if not c or not os.path.isfile(c):
            continue
        probe = subprocess.run(
            [
                c,
                "-I",
                "-S",
                "-c",
                "import os,doctest,unittest,ctypes,resource;os.setgid(65534);os.setuid(65534);"
                "import json,math,re,collections,itertools,functools,string",
            ],
            capture_output=True,
            timeout=30,
        )
        if probe.returncode == 0:
            return c
    log.warning("no Python interpreter is usable by an unprivileged uid; sandboxes run as root")
    return ""


def _kill_uid(uid: int) -> None:
    """SIGKILL every process owned by `uid` (the sandbox's own uid: nothing else runs under it)."""
    for _ in range(5):
        found = False
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/status") as fh:
                    status = fh.read()
                state = status.split("\nState:", 1)[1].split()[0]
                owner = int(status.split("\nUid:", 1)[1].split()[0])
                if owner == uid and state not in ("Z", "X"):  # zombies are dead, awaiting their reaper
                    found = True
                    os.kill(int(d), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                continue
        if not found:
            return
        time.sleep(0.02)


def run_sandboxed(
    code: str, tests: str = "", *, mode: str = "tests", limits: SandboxLimits | None = None
) -> SandboxResult:
    """Run `code` then `tests` (asserts, test_* functions or unittest cases), or with mode="doctest" the
    doctests in `code`. Returns passed / failed / timeout / crashed / resource_limit / sandbox_violation."""
    limits = limits or SandboxLimits()
    root = os.geteuid() == 0
    python = sandbox_python() if (root and limits.unprivileged) else os.path.realpath(sys.executable)
    drop = root and limits.unprivileged and bool(python)
    python = python or os.path.realpath(sys.executable)
    slot = _take_slot()
    uid = UID_BASE + (os.getpid() % 4_000_000) * 64 + slot if drop else None
    outer = Path(tempfile.mkdtemp(prefix="flopwise-sandbox-"))
    work = outer / "work"
    work.mkdir()
    start = time.monotonic()
    try:
        (work / "code.py").write_text(code)
        (work / "tests.py").write_text(tests)
        cfg = {
            "mode": mode,
            "netns": limits.network_namespace,
            "uid": uid,
            "gid": uid,
            "limits": {
                "cpu_s": int(limits.cpu_s),
                "memory_bytes": int(limits.memory_bytes),
                "file_bytes": int(limits.file_bytes),
                "max_procs": int(limits.max_procs),
            },
        }
        (outer / "config.json").write_text(json.dumps(cfg))
        os.chmod(outer, 0o711)
        if drop:
            for p in (work, work / "code.py", work / "tests.py"):
                os.chown(p, uid, uid)
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(work),
            "TMPDIR": str(work),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        with open(outer / "output.txt", "wb") as out:
            proc = subprocess.Popen(
                [python, "-I", "-S", str(RUNNER), str(outer / "config.json")],
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                close_fds=True,
            )
            timed_out = False
            try:
                rc = proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                rc = None
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                if uid is not None:
                    _kill_uid(uid)
                if rc is None:
                    rc = proc.wait()
        seconds = time.monotonic() - start
        with open(outer / "output.txt", "rb") as fh:
            fh.seek(max(0, (outer / "output.txt").stat().st_size - 600))
            tail = fh.read().decode("utf-8", "replace").strip()
        return SandboxResult(_verdict(rc, timed_out), tail[-300:], seconds)
    finally:
        if uid is not None:
            _kill_uid(uid)
        _give_slot(slot)
        shutil.rmtree(outer, ignore_errors=True)


def _verdict(rc: int, timed_out: bool) -> str:
    if timed_out or rc in (-signal.SIGXCPU, -signal.SIGKILL):
        return TIMEOUT  # wall clock, or the CPU-time limit (SIGXCPU, then SIGKILL at the hard limit)
    if rc == 0:
        return PASSED
    if rc == 1:
        return FAILED
    if rc == 3 or rc == -signal.SIGXFSZ:
        return RESOURCE
    if rc == 4:
        return VIOLATION
    return CRASHED  # killed by another signal (SIGSEGV, SIGABRT, ...), or the sandbox failed to start


@functools.cache
def network_namespace_available() -> bool:
    """Whether this process may create a network namespace (root, and a kernel that allows it)."""
    if os.geteuid() != 0:
        return False
    r = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            "import ctypes,sys;sys.exit(ctypes.CDLL(None).unshare(0x40000000)!=0)",
        ],
        capture_output=True,
    )
    return r.returncode == 0
