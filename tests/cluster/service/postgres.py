"""A throw-away PostgreSQL server for tests: Debian's `postgresql` package (initdb + pg_ctl) in a temporary
directory on a free port of 127.0.0.1, as the current user (as `postgres` when running as root, which initdb
refuses). `start_postgres` returns (url, stop) or raises pytest's skip with the reason."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.ports import free_port


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def start_postgres(tmp: Path):
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no PostgreSQL server (install Debian's postgresql package)")
    prefix: list[str] = []
    user = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        runuser = shutil.which("runuser")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres user to run the server as")
        if not runuser:
            pytest.skip("running as root without runuser")
        prefix, user = [runuser, "-u", "postgres", "--"], "postgres"
    if user:  # pytest's temporary directories are private to root: the server gets a directory of its own
        tmp = Path(tempfile.mkdtemp(prefix="flopwise-pg-"))
        shutil.chown(tmp, user)
    data = tmp / "pgdata"
    port = free_port()
    run = dict(capture_output=True, text=True, timeout=120)
    r = subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "flopwise", "--no-sync"], **run)
    if r.returncode != 0:
        pytest.skip(f"initdb failed: {r.stderr.strip()[:200]}")
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
    r = subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", opts, "-l", str(data / "log.txt"), "-w", "start"], **run)
    if r.returncode != 0:
        pytest.skip(f"pg_ctl start failed: {r.stderr.strip()[:200]}")

    def stop() -> None:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], **run)
        if user:
            shutil.rmtree(tmp, ignore_errors=True)

    return f"postgresql://flopwise@127.0.0.1:{port}/postgres", stop
