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


def _pools(keys: torch.Tensor, values: torch.Tensor, tables: torch.Tensor, blocks: int) -> tuple[torch.Tensor, ...]:
    """Pools in the cache's layout (keys [blocks, kv_heads, d, block], values [blocks, kv_heads, block, d])
    holding each slot's dense keys/values [slots, kv_heads, keys, d] in the blocks of its table; the other
    blocks and the slots past a sequence's keys hold noise."""
    slots, kv_heads, length, d = keys.shape
    block = length // tables.shape[1]
    k_pool, v_pool = torch.randn(blocks, kv_heads, d, block), torch.randn(blocks, kv_heads, block, d)
    for s in range(slots):
        for i, b in enumerate(tables[s].tolist()):
            k_pool[b] = keys[s, :, i * block : (i + 1) * block].transpose(-1, -2)
            v_pool[b] = values[s, :, i * block : (i + 1) * block]
    return k_pool, v_pool


def _naive(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, slot: int, n: int) -> torch.Tensor:
    """Attention of one row q [heads, d] over the first n keys of a slot, one query head at a time."""
    group = q.shape[0] // keys.shape[1]
    rows = []
    for h in range(q.shape[0]):
        k, v = keys[slot, h // group, :n].double(), values[slot, h // group, :n].double()
        rows.append(torch.softmax(k @ q[h].double() * q.shape[1] ** -0.5, 0) @ v)
    return torch.stack(rows).float()


@pytest.mark.parametrize(("heads", "kv_heads", "d", "block"),
                         [(8, 4, 32, 16), (8, 4, 32, 4), (4, 4, 64, 16), (6, 2, 24, 4), (6, 2, 24, 16),
                          (12, 4, 128, 16), (4, 1, 17, 5), (3, 3, 1, 16)])
def test_kernel_and_pytorch_path_equal_plain_attention(kernel, heads, kv_heads, d, block):
    """Decodes at many context lengths (odd ones, block edges) and a later chunk of a prompt; GQA (groups of
    1-4), one KV head; head and block sizes the kernel specialises and ones it does not (odd head sizes
    too). The kernel and the PyTorch path both equal attention computed one head at a time in float64."""
    torch.manual_seed(0)
    width, seqs = 48 // block + 1, 10
    lengths = [0, 3, block - 1, block, block + 1, 2 * block + 1, 33, 47, 3 * block - 1]
    nb = seqs * width + 3
    tables = torch.randperm(nb)[: seqs * width].view(seqs, width).to(torch.int32).contiguous()
    keys, values = torch.randn(2, seqs, kv_heads, width * block, d).unbind(0)
    k_pool, v_pool = _pools(keys, values, tables, nb)
    chunks = [SeqChunk([1], n, tables[s].tolist(), s, 0) for s, n in enumerate(lengths)]
    chunks.append(SeqChunk([1] * 5, 20, tables[seqs - 1].tolist(), seqs - 1, 0))  # positions 20-24 of a prompt
    batch = build_batch(chunks, block, "cpu", lfa=False)
    q = torch.randn(batch.tokens.numel(), heads, d)
    expected = torch.stack([_naive(q[r], keys, values, s, n) for r, s, n in
                            zip(batch.paged_rows.tolist(), batch.paged_slots.tolist(), batch.paged_lens.tolist(),
                                strict=True)])
    reference, got = torch.full_like(q, 7.0), torch.full_like(q, 7.0)
    torch_paged_attention(reference, q, k_pool, v_pool, tables, batch)
    cpu_kernels.paged_attention(kernel, got, q, k_pool, v_pool, tables, batch.paged_rows, batch.paged_slots,
                                batch.paged_lens)
    assert torch.allclose(reference, expected, atol=1e-5, rtol=1e-4)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
    assert torch.allclose(got, reference, atol=1e-5, rtol=1e-4)


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
