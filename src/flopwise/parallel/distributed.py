"""The process group of a multi-process job (torchrun or torch.multiprocessing): NCCL on GPUs, gloo on CPU."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

import flopwise
from flopwise.errors import ParallelError


def launched() -> bool:
    """True inside a multi-process launch (torchrun sets WORLD_SIZE for every rank)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or dist.is_initialized()


def init_distributed(timeout_s: int) -> torch.device:
    """Join the process group started by torchrun; check that every rank runs the same versions."""
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise ParallelError("a parallel layout needs several processes: run `flopwise train --nproc N ...` or torchrun")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    versions = [None] * dist.get_world_size()
    dist.all_gather_object(versions, (torch.__version__, flopwise.__version__))
    if len(set(versions)) > 1:
        detail = ", ".join(f"rank {r}: torch {t} flopwise {f}" for r, (t, f) in enumerate(versions))
        raise ParallelError(f"ranks run different versions ({detail}); install the same everywhere")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def close_distributed() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
