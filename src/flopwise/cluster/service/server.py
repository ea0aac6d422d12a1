"""`flopwise cluster up`: the database, the loop and the API in one process, the API on one port of 127.0.0.1
(or --host). The service's home (default ~/.flopwise/cluster) holds the SQLite database, tokens.toml, the jobs'
directories and endpoint.json (the URL the CLI uses)."""

from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from flopwise.atomic import atomic_write_text
from flopwise.cluster.service.api import Tokens, create_app
from flopwise.cluster.service.daemon import ClusterService, ServiceOptions, local_cluster
from flopwise.cluster.service.store import Store, database_url
from flopwise.cluster.spec import ClusterSpec
from flopwise.errors import ConfigError

log = logging.getLogger(__name__)
DEFAULT_HOME = Path.home() / ".flopwise" / "cluster"


def load_tokens(home: Path, path: Path | None) -> Tokens:
    if path is not None:
        return Tokens.load(path)
    default = home / "tokens.toml"
    return Tokens.load(default) if default.is_file() else Tokens.create(default)


@dataclass
class Running:
    """A service started by `start` (tests, benchmarks): its URL and how to stop it."""

    url: str
    service: ClusterService
    server: uvicorn.Server
    thread: threading.Thread
    tokens: Tokens

    def stop(self, kill_jobs: bool = True) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.service.stop(kill_jobs=kill_jobs)
        self.service.store.close()


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None
    sock.listen(128)
    return sock


def build(home: Path, db: str | None = None, cluster: ClusterSpec | None = None,
          options: ServiceOptions | None = None, tokens: Path | None = None, ray: str | None = None,
          ray_resource: str = "GPU") -> tuple[ClusterService, Tokens]:
    """The service over `home`; with `ray` (an address or 'auto') its nodes and executor are Ray's (`cluster`
    then only gives the queues)."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    store = Store(database_url(db, home))
    executor = None
    if ray:
        from flopwise.cluster.service.ray_executor import RayExecutor, connect, ray_cluster

        handle = connect(ray)
        cluster = ray_cluster(handle, ray_resource, cluster)
        executor = RayExecutor(handle, home, ray_resource, (options or ServiceOptions()).grace_s)
    service = ClusterService(home, store, cluster or local_cluster(), options, executor)
    return service, load_tokens(home, tokens)


def start(home: Path, host: str = "127.0.0.1", port: int = 0, **kw) -> Running:
    """Start the service in this process (the loop and the API in threads); port 0: a free port."""
    service, tokens = build(home, **kw)
    sock = bind(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app(service, tokens), log_level="warning", access_log=False))
    service.start()
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="flopwise-cluster-api", daemon=True)
    thread.start()
    write_endpoint(Path(home), url)
    return Running(url, service, server, thread, tokens)


def write_endpoint(home: Path, url: str) -> None:
    atomic_write_text(home / "endpoint.json", json.dumps({"url": url}) + "\n")


def serve_forever(home: Path, host: str, port: int, on_ready=None, **kw) -> None:
    """`flopwise cluster up` in the foreground until Ctrl-C; jobs keep running after it (the next start adopts them)."""
    service, tokens = build(home, **kw)
    sock = bind(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app(service, tokens), log_level="warning"))
    service.start()
    write_endpoint(Path(home), url)
    if on_ready is not None:
        on_ready(url, service, tokens)
    try:
        server.run(sockets=[sock])
    finally:
        service.stop(kill_jobs=False)
        service.store.close()
