"""The paged forward pass: many sequences at different positions in one flat batch, keys and values in a
pool of fixed-size blocks addressed through per-sequence block tables (Kwon et al. 2023, PagedAttention).

The model's own modules and weights do the work; only the order of operations differs from
`Transformer.forward`: tokens of all sequences are concatenated ([T, h]), each has its own position, the
new keys/values are written into their pool slots, and attention reads each sequence's keys through its
block table: on CPU in place, by the C kernel of `cpu_kernels` where it builds; elsewhere by gathering the
blocks into padded tensors (`torch_paged_attention`, also the kernel's reference). A GPU kernel taking the
same arguments (query rows, pool, block tables, context lengths) can replace the gather.

LFA needs, per sequence, the last filter input x[t-1] and conv1 output y1[t-1] of every layer (Yuan 2.0,
reference/yuan2.md): a constant-size state held in slots of `lfa_x` / `lfa_y`. For prefix caching the same
state is also kept at the end of every full block, so a request that reuses cached blocks resumes the
filter exactly where the cached prefix left it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from flopwise.errors import ConfigError
from flopwise.models.config import ModelConfig
from flopwise.models.lfa import LocalizedFilter
from flopwise.models.rope import apply_rope
from flopwise.models.transformer import Transformer
from flopwise.serve import cpu_kernels
from flopwise.serve.config import EngineConfig

CPU_KV_CAP = 4 << 30  # default ceiling of the KV pool on CPU (bytes): RAM is shared with everything else


class PagedKVCache:
    def __init__(self, cfg: ModelConfig, num_blocks: int, block_size: int, max_seqs: int, device, dtype,
                 block_states: bool, attention: str = "auto"):
        if cfg.window:  # the paged kernels attend to every cached token of a sequence
            raise ConfigError(f"a sliding-window model (model.window = {cfg.window}) cannot be served yet: the paged "
                              "engine attends to every cached token")
        if cfg.is_latent:  # its keys are wider than its values, and a latent cache is a layout of its own
            raise ConfigError(f"a latent-attention model (model.kv_lora_rank = {cfg.kv_lora_rank}) cannot be served yet: "
                              "the paged engine's blocks hold keys and values of one head dim, and no latent cache")
        self.cfg = cfg
        self.num_blocks = num_blocks
        self.block_size = block_size
        # Head-major blocks; keys key-major inside a block ([kv_heads, head_dim, block]: the keys of a block side
        # by side per dimension, as the CPU kernel's score loop reads them), values one per row.
        self.k = torch.zeros(cfg.layers, num_blocks, cfg.kv_heads, cfg.head_dim, block_size, device=device, dtype=dtype)
        self.v = torch.zeros(cfg.layers, num_blocks, cfg.kv_heads, block_size, cfg.head_dim, device=device, dtype=dtype)
        # Block tables as one tensor, a row per sequence slot, filled as sequences gain blocks (`sync`).
        self.tables = torch.zeros(max_seqs, math.ceil(cfg.seq_len / block_size), dtype=torch.int32, device=device)
        self.kernel = None
        if attention != "torch" and torch.device(device).type == "cpu" and dtype == torch.float32:
            self.kernel = cpu_kernels.load()
        if attention == "kernel" and self.kernel is None:
            raise ConfigError("serve.attention = 'kernel': the CPU paged-attention kernel is unavailable here "
                              "(it needs a C compiler, a CPU device and fp32); use 'auto' or 'torch'")
        self.lfa_x = self.lfa_y = self.block_x = self.block_y = None
        if cfg.lfa:
            self.lfa_x = torch.zeros(max_seqs, cfg.layers, cfg.hidden, device=device, dtype=dtype)
            self.lfa_y = torch.zeros(max_seqs, cfg.layers, cfg.hidden // 2, device=device, dtype=dtype)
            if block_states:
                self.block_x = torch.zeros(num_blocks, cfg.layers, cfg.hidden, device=device, dtype=dtype)
                self.block_y = torch.zeros(num_blocks, cfg.layers, cfg.hidden // 2, device=device, dtype=dtype)

    def sync_tables(self, gained: list[tuple[int, int, int]]) -> None:
        """Write (slot, index, block) entries, the blocks sequences gained since the last step, in one go."""
        if gained:
            slots, cols, blocks = (torch.tensor(v, device=self.tables.device) for v in zip(*gained, strict=True))
            self.tables[slots, cols] = blocks.to(torch.int32)

    def restore_filter(self, slot: int, block: int) -> None:
        """Start a sequence's LFA state from the state saved at the end of a cached block."""
        if self.block_x is not None:
            self.lfa_x[slot] = self.block_x[block]
            self.lfa_y[slot] = self.block_y[block]


def bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype, block_states: bool) -> int:
    elem = torch.empty((), dtype=dtype).element_size()
    kv = 2 * cfg.layers * block_size * cfg.kv_heads * cfg.head_dim * elem
    lfa = cfg.layers * (cfg.hidden + cfg.hidden // 2) * elem if (cfg.lfa and block_states) else 0
    return kv + lfa


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def plan_num_blocks(cfg: ModelConfig, config: EngineConfig, device: torch.device, dtype: torch.dtype) -> tuple[int, int]:
    """(blocks, bytes per block) for the pool: the configured count, or as many as the memory budget holds
    (a fraction of free accelerator memory after the weights; on CPU of available RAM, capped at 4 GiB),
    but no more than twice what max_num_seqs full-length sequences could use."""
    per_block = bytes_per_block(cfg, config.block_size, dtype, config.enable_prefix_caching)
    per_seq = math.ceil(cfg.seq_len / config.block_size)
    if config.num_blocks:
        blocks = config.num_blocks
    else:
        if config.kv_cache_memory:
            budget = config.kv_cache_memory
        elif device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget = int(free * config.kv_memory_fraction)
        else:
            budget = min(int(_available_ram() * config.kv_memory_fraction), CPU_KV_CAP)
        blocks = min(budget // per_block, 2 * config.max_num_seqs * per_seq)
    if blocks < per_seq:
        raise ConfigError(
            f"KV cache of {blocks} blocks x {config.block_size} tokens cannot hold one sequence of the model "
            f"context ({cfg.seq_len} tokens, {per_seq} blocks of {per_block:,} bytes): give more memory"
        )
    return blocks, per_block


@dataclass
class SeqChunk:
    """One sequence's share of a step: `tokens` at positions num_computed .. num_computed + len - 1."""

    tokens: list[int]
    num_computed: int
    block_table: list[int]
    slot: int  # the sequence's slot: its row of the block-table tensor and its LFA state
    logits_from: int  # first chunk index whose logits are returned (len - 1 for the next token only)


@dataclass
class StepBatch:
    tokens: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    write_blocks: torch.Tensor  # [T] block and offset of each new key/value
    write_offsets: torch.Tensor
    logit_rows: torch.Tensor  # [R] rows whose logits are returned
    # Rows that read their keys from the pool (decodes and later chunks of a prompt): the row, its
    # sequence's slot in the block-table tensor, and how many keys it sees (its position + 1).
    paged_rows: torch.Tensor | None = None  # int32
    paged_slots: torch.Tensor | None = None
    paged_lens: torch.Tensor | None = None
    fresh: list[tuple[int, int]] = field(default_factory=list)  # (first row, rows) of prompts starting now
    # the same paged rows, grouped for the PyTorch path: single-row sequences together, chunks one by one
    decode_rows: list[int] = field(default_factory=list)
    chunks: list[tuple[int, int, int]] = field(default_factory=list)  # (first row, rows, slot)
    first_rows: torch.Tensor | None = None  # LFA: each sequence's first row, its slot, whether it is fresh
    state_slots: torch.Tensor | None = None
    fresh_seq: torch.Tensor | None = None
    last_rows: torch.Tensor | None = None
    block_end_rows: torch.Tensor | None = None  # rows that complete a block, and that block
    block_end_ids: torch.Tensor | None = None


def _decode_batch(chunks: list[SeqChunk], block_size: int, device, lfa: bool) -> StepBatch:
    """build_batch when every sequence brings one token (steady decoding): a few list comprehensions, two
    tensors, views of their rows."""
    pos = [c.num_computed for c in chunks]
    slots = [c.slot for c in chunks]
    blocks = [c.block_table[p // block_size] for c, p in zip(chunks, pos, strict=True)]
    rows = list(range(len(chunks)))
    longs = torch.tensor([[c.tokens[0] for c in chunks], pos, blocks, [p % block_size for p in pos], rows, slots],
                         device=device)
    ints = torch.tensor([rows, slots, [p + 1 for p in pos]], dtype=torch.int32, device=device)
    batch = StepBatch(longs[0], longs[1], longs[2], longs[3], longs[4], paged_rows=ints[0], paged_slots=ints[1],
                      paged_lens=ints[2], decode_rows=rows)
    if lfa:
        ends = [(i, b) for i, (p, b) in enumerate(zip(pos, blocks, strict=True)) if p % block_size == block_size - 1]
        batch.first_rows = batch.last_rows = longs[4]
        batch.state_slots = longs[5]
        batch.fresh_seq = longs[1] == 0
        batch.block_end_rows = torch.tensor([i for i, _ in ends], dtype=torch.long, device=device)
        batch.block_end_ids = torch.tensor([b for _, b in ends], dtype=torch.long, device=device)
    return batch


def build_batch(chunks: list[SeqChunk], block_size: int, device, lfa: bool = True) -> StepBatch:
    if all(len(c.tokens) == 1 and c.logits_from == 0 for c in chunks):
        return _decode_batch(chunks, block_size, device, lfa)
    tokens, positions, blocks, offsets, logit_rows = [], [], [], [], []
    paged_rows, paged_slots, paged_lens, fresh, decode_rows, seq_chunks = [], [], [], [], [], []
    first_rows, state_slots, fresh_seq, last_rows, end_rows, end_ids = [], [], [], [], [], []
    row = 0
    for c in chunks:
        n = len(c.tokens)
        start, context = c.num_computed, c.num_computed + n
        tokens.extend(c.tokens)
        if n == 1:  # a decode: no per-token loops
            positions.append(start)
            blocks.append(c.block_table[start // block_size])
            offsets.append(start % block_size)
        else:
            pos = range(start, context)
            positions.extend(pos)
            blocks.extend(c.block_table[p // block_size] for p in pos)
            offsets.extend(p % block_size for p in pos)
        logit_rows.extend(range(row + c.logits_from, row + n))
        if start == 0 and n > 1:  # a fresh prompt: its keys are all in this step, plain causal attention
            fresh.append((row, n))
        else:
            paged_rows.extend(range(row, row + n))
            paged_slots.extend([c.slot] * n)
            paged_lens.extend(range(start + 1, context + 1))
            if n == 1:
                decode_rows.append(row)
            else:
                seq_chunks.append((row, n, c.slot))
        if lfa:
            first_rows.append(row)
            state_slots.append(c.slot)
            fresh_seq.append(start == 0)
            last_rows.append(row + n - 1)
            for p in range(start // block_size * block_size + block_size - 1, context, block_size):
                end_rows.append(row + p - start)  # rows that complete a block
                end_ids.append(c.block_table[p // block_size])
        row += n

    def t(values, dtype=torch.long):
        return torch.tensor(values, dtype=dtype, device=device)

    batch = StepBatch(t(tokens), t(positions), t(blocks), t(offsets), t(logit_rows), fresh=fresh,
                      decode_rows=decode_rows, chunks=seq_chunks)
    if paged_rows:
        batch.paged_rows, batch.paged_slots, batch.paged_lens = (t(v, torch.int32) for v in (paged_rows, paged_slots,
                                                                                            paged_lens))
    if lfa:
        batch.first_rows, batch.state_slots, batch.fresh_seq = t(first_rows), t(state_slots), t(fresh_seq, torch.bool)
        batch.last_rows = t(last_rows)
        batch.block_end_rows, batch.block_end_ids = t(end_rows), t(end_ids)
    return batch


def torch_paged_attention(out: torch.Tensor, q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                          tables: torch.Tensor, batch: StepBatch) -> None:
    """The paged rows of `out` in PyTorch (any device and dtype): the reference for the CPU kernel.
    k_pool [blocks, kv_heads, d, block] (key-major blocks), v_pool [blocks, kv_heads, block, d].

    Decoding sequences go together: their blocks are gathered into padded [nd, kv_heads, d, keys] keys and
    [nd, kv_heads, keys, d] values, and the query heads of each KV group meet that group's keys (grouped-query
    attention without repeated keys). A later chunk of a prompt gathers its blocks and uses a causal mask
    offset by what it has."""
    kv_heads, block_size, d = v_pool.shape[1:]
    group = q.shape[1] // kv_heads
    lens = batch.paged_lens.tolist()
    slot_of = dict(zip(batch.paged_rows.tolist(), batch.paged_slots.tolist(), strict=True))
    len_of = dict(zip(batch.paged_rows.tolist(), lens, strict=True))

    def blocks_of(pool: torch.Tensor, slots: list[int], keys: int) -> torch.Tensor:  # [n, width, kv_heads, ., .]
        width = -(-keys // block_size)
        table = tables[torch.tensor(slots, device=tables.device), :width].flatten()
        return pool.index_select(0, table).view(len(slots), width, *pool.shape[1:])

    def gather_keys(slots: list[int], keys: int) -> torch.Tensor:  # -> [n, kv_heads, d, keys]
        blocks = blocks_of(k_pool, slots, keys)
        return blocks.permute(0, 2, 3, 1, 4).reshape(len(slots), kv_heads, d, -1)[..., :keys]

    def gather_values(slots: list[int], keys: int) -> torch.Tensor:  # -> [n, kv_heads, keys, d]
        blocks = blocks_of(v_pool, slots, keys)
        return blocks.transpose(1, 2).reshape(len(slots), kv_heads, -1, d)[:, :, :keys]

    if batch.decode_rows:
        rows = batch.decode_rows
        keys = max(len_of[r] for r in rows)
        slots = [slot_of[r] for r in rows]
        kd, vd = gather_keys(slots, keys), gather_values(slots, keys)
        qd = q[rows].view(len(rows), kv_heads, group, d)
        visible = torch.arange(keys, device=q.device) < torch.tensor([len_of[r] for r in rows], device=q.device)[:, None]
        scores = torch.matmul(qd, kd).float() * d**-0.5  # [nd, kv_heads, group, keys]
        probs = scores.masked_fill(~visible[:, None, None], float("-inf")).softmax(-1).to(q.dtype)
        out[rows] = torch.matmul(probs, vd).reshape(len(rows), -1, d)
    for start, n, slot in batch.chunks:
        context = len_of[start + n - 1]
        kp, vp = gather_keys([slot], context).transpose(-1, -2), gather_values([slot], context)
        q_pos = torch.arange(context - n, context, device=q.device)
        mask = torch.arange(context, device=q.device).unsqueeze(0) <= q_pos.unsqueeze(1)
        qp = q[start : start + n].transpose(0, 1).unsqueeze(0)  # [1, heads, n, d]
        op = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, enable_gqa=group != 1)
        out[start : start + n] = op[0].transpose(0, 1)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                    cache: PagedKVCache, batch: StepBatch) -> torch.Tensor:
    """q [T, heads, d]; k/v [T, kv_heads, d] this step's keys and values; k_pool [blocks, kv_heads, d,
    block_size] and v_pool [blocks, kv_heads, block_size, d] of one layer, already holding them. Returns
    [T, heads, d].

    A prompt that starts in this step attends to this step's keys directly (causal SDPA); every other row
    reads its sequence's blocks through the block table: in place with the CPU kernel where it is built,
    else by gathering them in PyTorch."""
    out = torch.empty_like(q)
    for start, n in batch.fresh:
        qp, kp, vp = (t[start : start + n].transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, heads, n, d]
        op = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
        out[start : start + n] = op[0].transpose(0, 1)
    if batch.paged_rows is not None:
        if cache.kernel is not None:
            cpu_kernels.paged_attention(cache.kernel, out, q, k_pool, v_pool, cache.tables, batch.paged_rows,
                                        batch.paged_slots, batch.paged_lens)
        else:
            torch_paged_attention(out, q, k_pool, v_pool, cache.tables, batch)
    return out


def _filter(filt: LocalizedFilter, x: torch.Tensor, layer: int, cache: PagedKVCache, batch: StepBatch) -> torch.Tensor:
    """LFA over a flat batch: each row's previous row is its predecessor in the same sequence, or the
    sequence's saved state at the first row of its chunk (zeros for a fresh sequence)."""

    def shifted(values: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        prev = torch.cat([values.new_zeros(1, values.shape[1]), values[:-1]])
        carried = state[batch.state_slots, layer].to(values.dtype)
        prev[batch.first_rows] = torch.where(batch.fresh_seq.unsqueeze(1), torch.zeros_like(carried), carried)
        return prev

    y1 = filt._causal_conv(x, shifted(x, cache.lfa_x), filt.conv1)
    y2 = filt._causal_conv(y1, shifted(y1, cache.lfa_y), filt.conv2)
    cache.lfa_x[batch.state_slots, layer] = x[batch.last_rows]
    cache.lfa_y[batch.state_slots, layer] = y1[batch.last_rows]
    if cache.block_x is not None and batch.block_end_rows.numel():
        cache.block_x[batch.block_end_ids, layer] = x[batch.block_end_rows]
        cache.block_y[batch.block_end_ids, layer] = y1[batch.block_end_rows]
    return filt.norm(y2 + x)


@torch.no_grad()
def paged_forward(model: Transformer, cache: PagedKVCache, batch: StepBatch) -> torch.Tensor:
    """Run one step; returns fp32 logits [R, vocab] for batch.logit_rows."""
    x = model.tok_embeddings(batch.tokens)  # [T, h]
    t = x.shape[0]
    cos = model.rope_cos[batch.positions].unsqueeze(0)
    sin = model.rope_sin[batch.positions].unsqueeze(0)
    for index, block in model.layers.items():
        layer = int(index)
        attn = block.attn
        h = block.attn_norm(x)
        qk_in = _filter(attn.lfa, h, layer, cache, batch) if attn.lfa is not None else h
        q = apply_rope(attn.wq(qk_in).view(1, t, -1, attn.head_dim), cos, sin)[0]
        k = apply_rope(attn.wk(qk_in).view(1, t, -1, attn.head_dim), cos, sin)[0]
        v = attn.wv(h).view(t, -1, attn.head_dim)
        cache.k[layer][batch.write_blocks, :, :, batch.write_offsets] = k
        cache.v[layer][batch.write_blocks, :, batch.write_offsets] = v
        o = paged_attention(q, k, v, cache.k[layer], cache.v[layer], cache, batch)
        x = x + attn.wo(o.reshape(t, -1))
        m = block.mlp(block.ffn_norm(x).unsqueeze(0))
        x = x + (m[0] if isinstance(m, tuple) else m)[0]
    h = model.norm(x if batch.logit_rows.numel() == t else x[batch.logit_rows])  # logit rows ascend: all = all
    return logits(model.output, h)


LOGIT_SLICE_BYTES = 512 << 10  # a slice of the output projection's weight that stays in a core's L2 cache


def logits(output: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    """fp32 logits [R, vocab] of the final hidden states h [R, hidden].

    On CPU the output projection runs in slices of the vocabulary of ~512 KiB of weights each: one GEMM over
    the whole [vocab, hidden] weight (8 MiB for tiny-llama, the largest GEMM of a decode step) ran 15-20%
    slower at 64-128 rows (torch 2.13, MKL, one thread, 2-core AMD EPYC); each logit is the same dot
    product either way."""
    weight = getattr(output, "weight", None)
    if h.device.type != "cpu" or type(output) is not torch.nn.Linear or output.bias is not None:
        return output(h).float()
    rows = max(64, LOGIT_SLICE_BYTES // (weight.shape[1] * weight.element_size()))
    if weight.shape[0] <= rows:
        return F.linear(h, weight).float()
    return torch.cat([F.linear(h, part) for part in weight.split(rows)], dim=1).float()
