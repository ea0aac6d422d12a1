"""Run the OpenAI-compatible server: `flopwise serve --checkpoint DIR` (the API in this process, the engine on
a thread of this one or, with --engine-process, in a child process)."""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

from flopwise.errors import ConfigError
from flopwise.serve.api import attach, build_app
from flopwise.serve.async_engine import AsyncEngine
from flopwise.serve.config import ENGINE_PROCESS_DEFAULT, EngineConfig
from flopwise.serve.engine import Engine
from flopwise.serve.loader import load_served_model
from flopwise.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)


def create_app(checkpoint: str | Path, config: EngineConfig | None = None, api_key: str | None = None,
               model_name: str | None = None, engine_process: bool = ENGINE_PROCESS_DEFAULT):
    """Start an engine for the checkpoint and return the FastAPI app serving it. `engine_process`: the engine
    runs in a process of its own (flopwise.serve.engine_process), else on a thread of this one."""
    config = config or EngineConfig()
    if engine_process:
        from flopwise.serve.engine_process import ProcessEngine

        engine = ProcessEngine(checkpoint, config, model_name)
    else:
        served = load_served_model(checkpoint, config.device, config.dtype, model_name)
        engine = AsyncEngine(Engine(served, config), ServeMetrics(served.name))
    return attach(build_app(), engine, engine.info.name, api_key)


def check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def run_server(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM), then stop the engine (its process or thread)."""
    import uvicorn

    check_port(host, port)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    finally:
        app.state.flopwise.engine.shutdown()


class BackgroundServer:
    """The app on a uvicorn server in a thread of this process (tests, benchmarks, notebooks)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        if port == 0:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
        self.app, self.host, self.port = app, host, port
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.app.state.flopwise.engine.shutdown()
