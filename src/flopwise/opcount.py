"""The ops eager PyTorch dispatches for flopwise's model, counted: each costs host time beside its arithmetic (Python,
the dispatcher, autograd's bookkeeping), which on a CPU adds to the step and makes small micro-batches slower than
their FLOPs say (hardware.Accelerator.op_overhead_s prices one op; plan/cost.py adds them up).

The count comes from a narrow copy of the model: the same blocks (attention kind, LFA, MLP, experts and router)
at widths too small to matter, one and two layers deep; the difference is one block."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from flopwise.models.config import ModelConfig


class _Counter(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # nothing is compiled inside a count: without this, the first op imports torch._dynamo (seconds at start-up)
        return False

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


_COUNTING = threading.Lock()  # entering a dispatch mode sets process-wide torch state: one count at a time


def count_ops(forward: Callable[[], torch.Tensor]) -> tuple[int, int]:
    """(forward, backward) ATen ops of `forward()` (which returns a scalar loss) and of its backward."""
    with _COUNTING, torch.inference_mode(False), torch.enable_grad():  # callers may hold autograd off
        with _Counter() as counter:
            loss = forward()
        with _Counter() as backward:
            loss.backward()
    return counter.ops, backward.ops


def narrow(cfg: ModelConfig, layers: int) -> ModelConfig:
    """`cfg`'s structure at tiny widths: head_dim 4, FFN 8, a 64-token vocabulary and enough tokens that every expert
    of a mixture gets some (an expert without tokens dispatches nothing): 8 per expert of each token's top_k; a
    shared expert 8 wide; with a sliding window every block windowed (its mask's ops counted per block, the global
    blocks' too: an upper bound); every block an MoE one (a leading dense block dispatches fewer ops); latent
    attention's latents 8 wide, its rotated dims 2."""
    latent = dict(kv_lora_rank=8, q_lora_rank=8 if cfg.q_lora_rank else 0, rope_head_dim=2) if cfg.is_latent else {}
    return cfg.replace(layers=layers, hidden=4 * cfg.heads, attn_dim=0, ffn=8, shared_ffn=8 if cfg.shared_ffn else 0,
                       global_every=0, vocab_size=64, seq_len=max(16, 8 * cfg.experts // max(1, cfg.top_k)),
                       dense_layers=0, dense_ffn=0, **latent)


def training_step(cfg: ModelConfig) -> Callable[[], torch.Tensor]:
    """A function running `cfg`'s model forward to its loss on one sequence (fixed weights and tokens)."""
    import torch.nn.functional as F

    from flopwise.models.transformer import Transformer

    with torch.random.fork_rng(devices=[]):  # the CPU generator only: no CUDA context on a GPU host
        torch.manual_seed(0)
        model = Transformer(cfg)
        tokens = torch.randint(0, cfg.vocab_size, (1, cfg.seq_len))

    def forward() -> torch.Tensor:
        logits = model(tokens)
        return F.cross_entropy(logits.view(-1, cfg.vocab_size).float(), tokens.view(-1))

    return forward


@dataclass(frozen=True)
class ModelOps:
    block: tuple[int, int]  # (forward, backward) ops of one block per micro-batch
    rest: tuple[int, int]  # the embedding, final norm, head and loss


def model_ops(cfg: ModelConfig) -> ModelOps:
    """The ops flopwise's model of `cfg`'s structure dispatches per micro-batch (one sequence and many cost the same
    count)."""
    return _narrow_ops(narrow(cfg, 1))


@functools.lru_cache(maxsize=64)
def _narrow_ops(one_layer: ModelConfig) -> ModelOps:
    with torch.inference_mode(False):  # the narrow model's weights must be ordinary tensors, whatever the caller holds
        one, two = (count_ops(training_step(one_layer.replace(layers=n))) for n in (1, 2))
    block = (two[0] - one[0], two[1] - one[1])
    return ModelOps(block, (one[0] - block[0], one[1] - block[1]))
