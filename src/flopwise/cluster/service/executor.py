"""The local executor: runs each job as a process on this machine, under runner.py, in a session of its own.

Per job directory (`HOME/jobs/ID/`): `log.txt` (stdout and stderr of every attempt, appended), `exit-N` (the
exit status of attempt N, written by the runner), `out/` (what the job writes: the trainer's run directory).
`poll` reports the attempts that ended; `terminate` sends SIGTERM and, after the grace period, SIGKILL to the
whole process group; `adopt` takes back a process a previous service started (after a crash).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from flopwise.cluster.events import Placement

log = logging.getLogger(__name__)

LOST = -1  # the exit status reported for a process that vanished without writing one (killed with the runner)


@dataclass
class Proc:
    job: str
    attempt: int
    pid: int
    exit_file: Path
    popen: subprocess.Popen | None = None  # None: adopted from a previous service
    kill_at: float | None = None  # SIGKILL at this time (a SIGTERM was sent)
    cpu_s: float = 0.0  # CPU seconds of the process tree at the last sample
    started: float = field(default_factory=time.time)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class LocalExecutor:
    def __init__(self, home: Path, grace_s: float = 30.0) -> None:
        self.home = home
        self.grace_s = grace_s
        self.procs: dict[str, Proc] = {}

    def job_dir(self, job: str) -> Path:
        return self.home / "jobs" / job

    def exit_file(self, job: str, attempt: int) -> Path:
        return self.job_dir(job) / f"exit-{attempt}"

    def start(self, job: str, attempt: int, argv: list[str], cwd: str | None, env: dict[str, str],
              placement: Placement = ()) -> int:
        """Start attempt `attempt` of `job` (on this machine: `placement` names it); returns its pid. Raises
        OSError when it cannot start."""
        d = self.job_dir(job)
        (d / "out").mkdir(parents=True, exist_ok=True)
        exit_file = self.exit_file(job, attempt)
        exit_file.unlink(missing_ok=True)
        with open(d / "log.txt", "ab") as logf:
            logf.write(f"--- attempt {attempt} at {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n".encode())
            logf.flush()
            popen = subprocess.Popen(
                [sys.executable, "-m", "flopwise.cluster.service.runner", str(exit_file), "--", *argv],
                cwd=cwd or str(d), env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, stdout=logf,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.procs[job] = Proc(job, attempt, popen.pid, exit_file, popen)
        return popen.pid

    def adopt(self, job: str, attempt: int, pid: int | None) -> bool:
        """Take back attempt `attempt` of `job` started by an earlier service; True when it still runs or has
        left its exit status (poll then reports it), False when it vanished without one."""
        exit_file = self.exit_file(job, attempt)
        if pid is not None and _alive(pid) and self._is_runner(pid, exit_file):
            self.procs[job] = Proc(job, attempt, pid, exit_file)
            return True
        if exit_file.is_file():
            self.procs[job] = Proc(job, attempt, pid or 0, exit_file)
            return True
        return False

    @staticmethod
    def _is_runner(pid: int, exit_file: Path) -> bool:
        """The pid is still our runner (not a recycled pid): its command line names the exit file."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                return str(exit_file).encode() in fh.read()
        except OSError:
            return False

    def poll(self) -> list[tuple[str, int, int]]:
        """(job, attempt, exit status) of the processes that ended since the last poll."""
        ended = []
        now = time.time()
        for job, proc in list(self.procs.items()):
            running = proc.popen.poll() is None if proc.popen is not None else _alive(proc.pid)
            if running:
                if proc.kill_at is not None and now >= proc.kill_at:
                    log.warning("job %s: no exit %g s after SIGTERM, killing it", job, self.grace_s)
                    self._signal(proc, signal.SIGKILL)
                    proc.kill_at = None
                continue
            code = self._read_exit(proc)
            del self.procs[job]
            ended.append((job, proc.attempt, code))
        return ended

    def _read_exit(self, proc: Proc) -> int:
        try:
            return int(proc.exit_file.read_text().strip())
        except (OSError, ValueError):
            if proc.popen is not None and proc.popen.returncode is not None and proc.popen.returncode != 0:
                return 128 - proc.popen.returncode if proc.popen.returncode < 0 else proc.popen.returncode
            return LOST

    def terminate(self, job: str, grace_s: float | None = None) -> bool:
        """SIGTERM the job's processes (the trainer saves a checkpoint and exits); SIGKILL after the grace."""
        proc = self.procs.get(job)
        if proc is None:
            return False
        self._signal(proc, signal.SIGTERM)
        proc.kill_at = time.time() + (self.grace_s if grace_s is None else grace_s)
        return True

    def kill(self, job: str) -> None:
        proc = self.procs.get(job)
        if proc is not None:
            self._signal(proc, signal.SIGKILL)

    @staticmethod
    def _signal(proc: Proc, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)  # the runner leads its session: its group holds the job's processes
        except (ProcessLookupError, PermissionError):
            pass

    def running(self) -> dict[str, Proc]:
        return dict(self.procs)

    def cpu_seconds(self, job: str) -> float | None:
        """CPU seconds used by the job's process tree so far (psutil); None when unknown."""
        proc = self.procs.get(job)
        if proc is None:
            return None
        try:
            import psutil
        except ImportError:
            return None
        try:
            root = psutil.Process(proc.pid)
            total = 0.0
            for p in [root, *root.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
            proc.cpu_s = max(proc.cpu_s, total)
        except psutil.Error:
            pass
        return proc.cpu_s
