"""The CPU paged-attention kernel (C, compiled at run time) against the PyTorch path it replaces, and the
fallback when it cannot be built or is switched off."""

from __future__ import annotations

import random

import pytest
import torch

from flopwise.errors import ConfigError
from flopwise.serve import cpu_kernels
from flopwise.serve.config import EngineConfig
from flopwise.serve.engine import Engine
from flopwise.serve.paged import SeqChunk, build_batch, torch_paged_attention
from flopwise.serve.sampling import SamplingParams

GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def kernel():
    lib = cpu_kernels.load()
    if lib is None:
        pytest.skip("the CPU kernel cannot be built here (no C compiler)")
    return lib


@pytest.mark.parametrize(("heads", "kv_heads", "d"), [(8, 4, 32), (4, 4, 64), (6, 2, 24)])
def test_kernel_equals_the_pytorch_path(kernel, heads, kv_heads, d):
    """Decodes at many context lengths (block edges included) and a later chunk of a prompt, GQA and not,
    a head size the kernel specialises and one it does not."""
    torch.manual_seed(0)
    block, width, seqs = 4, 12, 9
    k_pool, v_pool = torch.randn(2, seqs * width + 3, kv_heads, block, d).unbind(0)
    tables = torch.randperm(seqs * width + 3)[: seqs * width].view(seqs, width).to(torch.int32).contiguous()
    chunks = [SeqChunk([1], n, tables[s].tolist(), s, 0) for s, n in enumerate([0, 3, 4, 5, 15, 16, 33, 47])]
    chunks.append(SeqChunk([1] * 5, 20, tables[8].tolist(), 8, 0))  # positions 20-24 of a prompt
    batch = build_batch(chunks, block, "cpu", lfa=False)
    q = torch.randn(batch.tokens.numel(), heads, d)
    expected, got = torch.full_like(q, 7.0), torch.full_like(q, 7.0)
    torch_paged_attention(expected, q, k_pool, v_pool, tables, batch)
    cpu_kernels.paged_attention(kernel, got, q, k_pool.contiguous(), v_pool.contiguous(), tables, batch.paged_rows,
                                batch.paged_slots, batch.paged_lens)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)


def _outputs(served, attention: str) -> tuple[list[list[int]], bool]:
    eng = Engine(served, EngineConfig(block_size=8, max_num_batched_tokens=64, device="cpu", attention=attention))
    rng = random.Random(3)
    batch = [[rng.randrange(1, 512) for _ in range(rng.randrange(5, 90))] for _ in range(6)]
    return eng.generate(batch, GREEDY), eng.cache.kernel is not None


@pytest.fixture(scope="module")
def with_kernel(kernel, served_llama):
    outputs, used = _outputs(served_llama, "kernel")
    assert used
    return outputs


def test_engine_output_is_the_same_with_the_kernel_and_without(with_kernel, served_llama):
    without, used = _outputs(served_llama, "torch")
    assert not used and with_kernel == without


def test_switched_off_or_without_a_compiler_the_engine_falls_back_to_pytorch(with_kernel, served_llama, monkeypatch,
                                                                             tmp_path):
    expected = with_kernel
    monkeypatch.setattr(cpu_kernels, "_loaded", {})
    monkeypatch.setenv("FLOPWISE_CPU_KERNELS", "0")
    off, used = _outputs(served_llama, "auto")
    assert not used and off == expected
    monkeypatch.setattr(cpu_kernels, "_loaded", {})
    monkeypatch.delenv("FLOPWISE_CPU_KERNELS")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("FLOPWISE_KERNEL_CACHE", str(tmp_path / "cache"))
    assert cpu_kernels.load() is None
    with pytest.raises(ConfigError, match="serve.attention = 'kernel'"):
        _outputs(served_llama, "kernel")
