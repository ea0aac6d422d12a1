"""The CPU paged-attention kernel (csrc/paged_attention.c): compiled once per machine with the system C
compiler, cached, and called through ctypes.

PyTorch has no paged attention for CPU; gathering every sequence's blocks into a padded tensor each step
and layer copies the whole KV history (the step's main cost at 64+ sequences). The kernel reads the
blocks in place. Without a compiler (or with FLOPWISE_CPU_KERNELS=0) `load()` returns None and the
engine keeps the PyTorch path, which computes the same thing."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "paged_attention.c"
FLAGS = ["-O3", "-fPIC", "-shared", "-Wno-unknown-pragmas"]
# Tried in order until one compiles: the host's instruction set and OpenMP threads, then without OpenMP
# (one thread; `omp simd` still vectorises), then portable code. -march=native is safe because the cached
# library is keyed by the CPU's flags (`_cpu_signature`): another CPU compiles its own.
VARIANTS = [["-march=native", "-fopenmp"], ["-march=native", "-fopenmp-simd"], ["-fopenmp-simd"], []]

_lock = threading.Lock()
_loaded: dict[str, object] = {}


def cache_dir() -> Path:
    root = os.environ.get("FLOPWISE_KERNEL_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flopwise" / "kernels"


def _cpu_signature() -> str:
    """-march=native code runs only where the instruction set matches: the cache key includes it."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _compile(compiler: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        for extra in VARIANTS:
            done = subprocess.run([compiler, *FLAGS, *extra, str(SOURCE), "-o", tmp], capture_output=True, text=True,
                                  timeout=300)
            if done.returncode == 0:
                break
            log.info("compiling with %s failed: %s", " ".join(extra) or "portable flags",
                     done.stderr.strip()[-300:])
        else:
            raise OSError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "compiler failed")
        os.replace(tmp, out)  # atomic: another process compiling the same kernel ends with the same file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load():
    """The kernel library (ctypes), or None where it cannot be built; logged once per process."""
    with _lock:
        if "lib" in _loaded:
            return _loaded["lib"]
        lib = None
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if os.environ.get("FLOPWISE_CPU_KERNELS", "1") == "0":
            log.info("CPU kernels disabled (FLOPWISE_CPU_KERNELS=0): PyTorch paged attention")
        elif compiler is None:
            log.warning("no C compiler found: paged attention on CPU runs in PyTorch (slower at large batches)")
        else:
            try:
                key = hashlib.sha256(SOURCE.read_bytes() + repr([compiler, FLAGS, VARIANTS]).encode()
                                     + _cpu_signature().encode()).hexdigest()[:16]
                path = cache_dir() / f"paged_attention-{key}.so"
                if not path.exists():
                    log.info("compiling the CPU paged-attention kernel into %s", path)
                    _compile(compiler, path)
                lib = ctypes.CDLL(str(path))
                fn = lib.paged_attention_f32
                ptr, i64 = ctypes.c_void_p, ctypes.c_int64
                fn.argtypes = [ptr] * 8 + [i64] * 6 + [ctypes.c_float, ctypes.c_int]
                fn.restype = ctypes.c_int
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("CPU paged-attention kernel unavailable (%s): PyTorch path", exc)
                lib = None
        _loaded["lib"] = lib
        return lib


def paged_attention(lib, out: torch.Tensor, q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                    tables: torch.Tensor, rows: torch.Tensor, row_slot: torch.Tensor, row_len: torch.Tensor) -> None:
    """out[rows] = attention of q[rows] over the first row_len keys of their sequences (see the C source
    for layouts). fp32, contiguous, int32 indices; q/out [T, H, D], k_pool [blocks, kv_heads, D, block] (keys
    side by side), v_pool [blocks, kv_heads, block, D]."""
    _, heads, d = q.shape
    _, kv_heads, block, _ = v_pool.shape
    assert k_pool.shape == (v_pool.shape[0], kv_heads, d, block)
    for t in (out, q, k_pool, v_pool, tables, rows, row_slot, row_len):
        assert t.is_contiguous() and t.device.type == "cpu"
    lib.paged_attention_f32(
        out.data_ptr(), q.data_ptr(), k_pool.data_ptr(), v_pool.data_ptr(), tables.data_ptr(), rows.data_ptr(),
        row_slot.data_ptr(), row_len.data_ptr(), rows.numel(), heads, kv_heads, d, block, tables.shape[1],
        d**-0.5, torch.get_num_threads())
