"""Engine configuration (validated when built) and the errors the serving layer raises."""

from __future__ import annotations

from dataclasses import dataclass

from flopwise.errors import ConfigError, FlopwiseError


class RequestError(ConfigError):
    """A request is invalid (bad parameters, prompt longer than the context): HTTP 400."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class QueueFullError(FlopwiseError):
    """The waiting queue is full: HTTP 429, the client should retry later."""


# Where `flopwise serve` runs its engine by default: True, in a process of its own (flopwise.serve.engine_process),
# as vLLM splits API server and engine core; False, on a thread of the API process. On an idle 2-core machine
# the process served 1.06-1.21x the thread's output tokens per second (benchmarks/RESULTS.md, Serving, third
# pass); on a machine whose cores other jobs keep busy the two placements measured the same within noise.
ENGINE_PROCESS_DEFAULT = True


@dataclass
class EngineConfig:
    block_size: int = 16  # tokens per KV-cache block
    max_num_seqs: int = 128  # sequences in the running batch at once
    max_num_batched_tokens: int = 512  # tokens per step (decode tokens + prefill chunks): bounds step latency
    max_waiting: int = 1024  # requests queued beyond this get 429
    num_blocks: int = 0  # 0: sized from free memory (kv_cache_memory / kv_memory_fraction)
    kv_cache_memory: int = 0  # bytes for the KV pool; 0: a fraction of free memory (see kv_memory_fraction)
    kv_memory_fraction: float = 0.9  # of free accelerator memory after the weights (CPU: of available RAM, capped)
    enable_prefix_caching: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    threads: int = 0  # torch intra-op threads of the engine thread; 0: torch's default
    attention: str = "auto"  # auto (the CPU paged-attention kernel where it builds, else PyTorch) | kernel | torch

    def __post_init__(self) -> None:
        for key in ("block_size", "max_num_seqs", "max_num_batched_tokens", "max_waiting"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"serve.{key} = {value!r}: must be a positive integer")
        for key in ("num_blocks", "kv_cache_memory", "threads"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"serve.{key} = {value!r}: must be a non-negative integer (0: automatic)")
        if not 0 < self.kv_memory_fraction <= 1:
            raise ConfigError(f"serve.kv_memory_fraction = {self.kv_memory_fraction}: must be in (0, 1]")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"serve.dtype = {self.dtype!r}: must be one of auto, fp32, bf16")
        if self.attention not in ("auto", "kernel", "torch"):
            raise ConfigError(f"serve.attention = {self.attention!r}: must be one of auto, kernel, torch")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"serve.device = {self.device!r}: must be auto, cpu, cuda or cuda:N")
