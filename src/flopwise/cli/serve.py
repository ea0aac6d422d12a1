"""`flopwise serve`: the OpenAI-compatible server (API process + engine process, or one process), or a Ray
Serve deployment (the engine on a thread of each replica)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from flopwise.cli.common import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, console, err_console, number
from flopwise.serve.config import ENGINE_PROCESS_DEFAULT


def serve(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A run directory (latest checkpoint) or a step directory."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", help="Port to listen on.", callback=number(low=0, high=65535, integer=True)),
    api_key: str = typer.Option(None, "--api-key", envvar="FLOPWISE_API_KEY",
                                help="Require 'Authorization: Bearer KEY' on the API (env FLOPWISE_API_KEY)."),
    model_name: str = typer.Option(None, "--served-model-name", help="Model id in the API (default: run directory name)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU), fp32 or bf16."),
    block_size: int = typer.Option(16, "--block-size", help="Tokens per KV-cache block."),
    max_num_seqs: int = typer.Option(128, "--max-num-seqs", help="Most sequences in the running batch."),
    max_num_batched_tokens: int = typer.Option(512, "--max-num-batched-tokens",
                                               help="Tokens per step; longer prompts are prefilled in chunks."),
    max_waiting: int = typer.Option(1024, "--max-waiting", help="Queued requests beyond this get HTTP 429."),
    kv_cache_gib: float = typer.Option(0.0, "--kv-cache-gib", help="KV pool size in GiB (0: from free memory).",
                                       callback=NON_NEGATIVE),
    no_prefix_caching: bool = typer.Option(False, "--no-prefix-caching", help="Do not reuse blocks of shared prefixes."),
    threads: int = typer.Option(0, "--threads", help="torch intra-op threads for the engine (0: torch's default)."),
    attention: str = typer.Option("auto", "--attention",
                                  help="Paged attention on CPU: auto (the C kernel where a compiler builds it, else "
                                       "PyTorch), kernel (required) or torch."),
    engine_process: bool = typer.Option(ENGINE_PROCESS_DEFAULT, "--engine-process/--no-engine-process",
                                        help="Run the engine (model, KV cache, scheduler, sampling) in a process of "
                                             "its own beside the API process, or on a thread of the API process."),
    ray: bool = typer.Option(False, "--ray", help="Run as a Ray Serve deployment with autoscaling replicas."),
    min_replicas: int = typer.Option(1, "--min-replicas", help="Ray: fewest replicas.", callback=NON_NEGATIVE_INT),
    max_replicas: int = typer.Option(1, "--max-replicas", help="Ray: most replicas.", callback=POSITIVE_INT),
    target_ongoing_requests: float = typer.Option(16.0, "--target-ongoing-requests",
                                                  help="Ray: requests in flight per replica the autoscaler aims at.",
                                                  callback=POSITIVE),
    replica_cpus: float = typer.Option(1.0, "--replica-cpus", help="Ray: CPUs reserved per replica.", callback=NON_NEGATIVE),
    replica_gpus: float = typer.Option(0.0, "--replica-gpus", help="Ray: GPUs per replica.", callback=NON_NEGATIVE),
    ray_address: str = typer.Option(None, "--ray-address", help="Ray: join this cluster ('auto') instead of a local one."),
) -> None:
    """Serve a checkpoint over an OpenAI-compatible HTTP API (completions, chat, streaming, metrics)."""
    from flopwise.errors import ConfigError
    from flopwise.serve.config import EngineConfig

    for module in ("fastapi", "uvicorn", "prometheus_client"):
        try:
            __import__(module)
        except ImportError:
            raise ConfigError(f"flopwise serve needs {module}: pip install 'flopwise[serve]'") from None
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port}: must be between 1 and 65535")
    if kv_cache_gib < 0:
        raise ConfigError(f"--kv-cache-gib {kv_cache_gib}: must not be negative")
    config = EngineConfig(block_size=block_size, max_num_seqs=max_num_seqs,
                          max_num_batched_tokens=max_num_batched_tokens, max_waiting=max_waiting,
                          kv_cache_memory=int(kv_cache_gib * 2**30), enable_prefix_caching=not no_prefix_caching,
                          device=device, dtype=dtype, threads=threads, attention=attention)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if ray:
        from flopwise.serve.ray_serve import RayServeOptions, deploy, serve_forever
        from flopwise.train.checkpoint import resolve_checkpoint

        options = RayServeOptions(min_replicas, max_replicas, target_ongoing_requests, replica_cpus=replica_cpus,
                                  replica_gpus=replica_gpus, address=ray_address)
        resolve_checkpoint(checkpoint)  # fail here, not inside a replica
        url = deploy(checkpoint, config, options, host, port, api_key, model_name)
        console.print(f"[bold]flopwise serve --ray[/]: {url}/v1 ({min_replicas}-{max_replicas} replicas); Ctrl-C stops")
        serve_forever()
        return
    from flopwise.serve.server import check_port, create_app, run_server

    check_port(host, port)
    app = create_app(checkpoint, config, api_key, model_name, engine_process)
    info = app.state.flopwise.engine.info
    err_console.print(
        f"[bold]flopwise serve[/]: model {info.name!r} ({info.max_model_len}-token context) "
        f"on http://{host}:{port}/v1; KV cache {info.num_blocks} blocks x {info.block_size} tokens "
        f"({info.num_blocks * info.block_bytes / 2**20:.1f} MiB); engine in "
        f"{'its own process' if engine_process else 'a thread of the server'}", highlight=False)
    run_server(app, host, port)


def register(app: typer.Typer) -> None:
    app.command()(serve)
