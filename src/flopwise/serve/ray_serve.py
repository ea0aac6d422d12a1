"""The same engine and API as a Ray Serve deployment: one engine per replica, replicas added and removed
with load (autoscaling on ongoing requests per replica), a replica that dies replaced by the controller.
A replica runs its engine on a thread (AsyncEngine): the replica is one Ray actor process, whose CPUs Ray
reserves and whose death Ray detects, so a second engine process would only hide from both."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from flopwise.errors import ConfigError
from flopwise.serve.config import EngineConfig

log = logging.getLogger(__name__)

APP_NAME = "flopwise"


@dataclass
class RayServeOptions:
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 16.0  # autoscaling aims at this many requests in flight per replica
    max_ongoing_requests: int = 256  # per replica, beyond which the proxy queues
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    address: str | None = None  # an existing Ray cluster ("auto"); None starts a local one

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise ConfigError(f"replicas: min {self.min_replicas}, max {self.max_replicas}: need 0 <= min <= max, max >= 1")
        if self.target_ongoing_requests <= 0:
            raise ConfigError(f"target ongoing requests = {self.target_ongoing_requests}: must be positive")
        if self.replica_cpus < 0 or self.replica_gpus < 0:
            raise ConfigError("replica CPUs and GPUs must not be negative")


def _deployment_class():
    from ray import serve

    @serve.ingress()
    class FlopwiseReplica:
        def __init__(self, checkpoint: str, config: dict, api_key: str | None, model_name: str | None):
            from flopwise.serve.async_engine import AsyncEngine
            from flopwise.serve.engine import Engine
            from flopwise.serve.loader import load_served_model
            from flopwise.serve.metrics import ServeMetrics

            engine_config = EngineConfig(**config)
            served = load_served_model(checkpoint, engine_config.device, engine_config.dtype, model_name)
            self.engine = AsyncEngine(Engine(served, engine_config), ServeMetrics(served.name))
            self.model_name = served.name
            self.api_key = api_key

        def __serve_build_asgi_app__(self):
            from flopwise.serve.api import attach, build_app

            return attach(build_app(), self.engine, self.model_name, self.api_key)

        def check_health(self) -> None:
            if self.engine.error is not None:
                raise RuntimeError(f"engine failed: {self.engine.error}")

    return FlopwiseReplica


def deploy(checkpoint: str | Path, config: EngineConfig, options: RayServeOptions, host: str = "127.0.0.1",
           port: int = 8000, api_key: str | None = None, model_name: str | None = None):
    """Start (or join) Ray, start Serve's HTTP proxy on host:port and run the deployment; returns once
    the first replicas are healthy."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    autoscaling = {
        "min_replicas": options.min_replicas,
        "initial_replicas": max(1, options.min_replicas),
        "max_replicas": options.max_replicas,
        "target_ongoing_requests": options.target_ongoing_requests,
        "upscale_delay_s": 5.0,
        "downscale_delay_s": 60.0,
    }
    deployment = serve.deployment(_deployment_class(), name="FlopwiseReplica").options(
        autoscaling_config=autoscaling,
        max_ongoing_requests=options.max_ongoing_requests,
        ray_actor_options={"num_cpus": options.replica_cpus, "num_gpus": options.replica_gpus},
        health_check_period_s=2,
        health_check_timeout_s=30,
    )
    app = deployment.bind(str(Path(checkpoint).resolve()), dataclasses.asdict(config), api_key, model_name)
    serve.run(app, name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


def serve_forever() -> None:
    """Block until interrupted (Ctrl-C or SIGTERM), then shut Serve and the local Ray instance down."""
    import signal

    import ray
    from ray import serve

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()


def replica_actor_names() -> list[str]:
    """Names of the live replica actors of the deployment (namespace "serve"), for tests and operators."""
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == "serve" and "FlopwiseReplica" in a["name"] and "REPLICA" in a["name"])
