"""Start a multi-process job on this machine with torchrun (torch.distributed.run).

The launcher prepares the data once (so ranks never race to build the demo corpus), then runs torchrun's
agent (flopwise.train.agent) with `--standalone --nproc-per-node N -m flopwise.cli <same arguments>`, as an
argument list (no shell), in its own session so that the launcher alone receives Ctrl-C.

One error path: a rank that meets a FlopwiseError writes its one line to the error folder and exits 2
without printing; the launcher prints the lowest rank's line once. SIGINT/SIGTERM to the launcher make the
agent stop every rank (SIGTERM, SIGKILL after its grace period); ranks still alive after that are killed
by pid. torchrun's agent stops every rank as soon as one fails; a hung collective ends at
parallel.timeout_s. For several nodes use torchrun's rendezvous directly (README: two-node and Slurm)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flopwise.errors import FlopwiseError, ParallelError
from flopwise.train.agent import ERROR_DIR_ENV, LAUNCHER_ENV
from flopwise.train.config import JobConfig, resolve_layout
from flopwise.train.run_lock import HELD_ENV
from flopwise.train.signals import Stopped, on_signals

STOP_GRACE_S = 60  # torchrun's own grace period is 30 s; then what is left is killed by pid


def _without_nproc(argv: list[str]) -> list[str]:
    """Drop --nproc from the forwarded arguments: torchrun's parser would take it for --nproc-per-node."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def toml_string(text: str) -> str:
    """`text` as a TOML basic string (what `--set` parses): JSON escapes are TOML escapes, DEL aside."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def torchrun_command(nproc: int, argv: list[str], shards: str | None) -> list[str]:
    argv = _without_nproc(argv)
    cmd = [sys.executable, "-m", "flopwise.train.agent", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "flopwise.cli", *argv]
    if shards:
        cmd += ["--set", f"data.shards={toml_string(shards)}"]
    return cmd


def rank_started() -> None:
    """In a rank of our launcher: leave this process's pid where the launcher can find a straggler."""
    folder, rank = os.environ.get(ERROR_DIR_ENV), os.environ.get("RANK")
    if folder and rank is not None:
        with contextlib.suppress(OSError):
            (Path(folder) / f"pid.{rank}").write_text(str(os.getpid()))


def report_rank_error(message: str) -> bool:
    """In a rank of our launcher: hand the error line to the launcher instead of printing it. True if handed."""
    folder, rank = os.environ.get(ERROR_DIR_ENV), os.environ.get("RANK")
    if not folder or rank is None:
        return False
    try:
        (Path(folder) / f"error.{rank}").write_text(message)
    except OSError:
        return False
    return True


def another_rank_failed() -> bool:
    """In a rank of our launcher: has another rank reported an error (so a broken collective here is only
    its echo)?"""
    folder = os.environ.get(ERROR_DIR_ENV)
    return bool(folder) and any(Path(folder).glob("error.*"))


def _kill_stragglers(folder: Path) -> None:
    for path in folder.glob("pid.*"):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(path.read_text()), signal.SIGKILL)


def _failure(folder: Path, code: int) -> FlopwiseError:
    errors = sorted((int(p.suffix[1:]), p.read_text().strip()) for p in folder.glob("error.*"))
    if errors:
        rank, message = errors[0]
        return FlopwiseError(message if rank == 0 else f"rank {rank}: {message}")
    detail = ""
    with contextlib.suppress(OSError, ValueError):
        failures = json.loads((folder / "agent.json").read_text())
        detail = "; ".join(f"rank {r} " + (f"was killed by {f['signal']}" if f.get("signal") else
                                            f"exited with status {f['exitcode']}") for r, f in sorted(failures.items()))
    return ParallelError(
        f"the distributed job failed (exit status {code})" + (f": {detail}" if detail else "") +
        "; a rank's own report, if it printed one, is above"
    )


def launch_torchrun(job: JobConfig, nproc: int, argv: list[str], lock_path: Path | None = None) -> int:
    from flopwise.train.trainer import resolve_shards

    resolve_layout(job, nproc)  # an impossible layout fails here, before any process starts
    shards = str(resolve_shards(job)) if not job.data.shards else None
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    with tempfile.TemporaryDirectory(prefix="flopwise-ranks-") as tmp:
        folder = Path(tmp)
        env = {**os.environ, "OMP_NUM_THREADS": threads, ERROR_DIR_ENV: tmp, LAUNCHER_ENV: str(os.getpid())}
        if lock_path is not None:
            env[HELD_ENV] = str(lock_path)
        stopped: list[int] = []
        proc = subprocess.Popen(torchrun_command(nproc, argv, shards), env=env, start_new_session=True)

        def stop(signum: int) -> None:
            if not stopped:
                stopped.append(signum)
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)  # the agent stops every rank

        try:
            with on_signals(stop):
                code = _wait(proc, stopped)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            _kill_stragglers(folder)
        if stopped:
            raise Stopped(stopped[0])
        if code != 0:
            raise _failure(folder, code)
    return 0


def _wait(proc: subprocess.Popen, stopped: list[int]) -> int:
    since = None
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        if stopped and since is None:
            since = time.monotonic()
        if since is not None and time.monotonic() - since > STOP_GRACE_S:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
