"""Run the pipeline's unit tasks on a Ray cluster with Ray Data (`flopwise data run --ray ADDR|auto`).

The same task functions as the local executor run as a Ray Data `map` over the pending tasks; each task
reads and writes the shared work directory (a path every node can see), so resumption and caching work
exactly as locally. "auto" connects to a running cluster if there is one, else starts a local Ray.
"""

from __future__ import annotations

import json
import logging
import os

from flopwise.errors import DataError

log = logging.getLogger(__name__)


def _init(address: str, workers: int):
    try:
        import ray
    except ImportError:  # pragma: no cover
        raise DataError("--ray needs the `ray[data]` package (pip install 'ray[data]')") from None
    if ray.is_initialized():
        return ray
    env = {"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "TOKENIZERS_PARALLELISM": "false"}}
    if address == "auto":
        try:
            ray.init(address="auto", runtime_env=env, log_to_driver=False)
            return ray
        except (ConnectionError, RuntimeError):
            log.info("no running Ray cluster found; starting a local one with %d CPUs", workers)
        ray.init(num_cpus=workers, runtime_env=env, log_to_driver=False, include_dashboard=False)
    else:
        try:
            ray.init(address=address, runtime_env=env, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"--ray {address}: cannot connect to the Ray cluster ({exc})") from None
    return ray


def _row_fn(fn):
    def run(row: dict) -> dict:
        out = fn(json.loads(row["task"]))
        return {"unit": int(out["unit"])}

    return run


def run_ray(fn, tasks: list[dict], address: str, workers: int):
    """Yield the number of finished tasks as they finish."""
    ray = _init(address, workers)
    ds = ray.data.from_items([{"task": json.dumps(t)} for t in tasks], override_num_blocks=len(tasks))
    done = 0
    for _ in ds.map(_row_fn(fn), num_cpus=1).iter_rows():
        done += 1
        yield done
