"""The paged forward pass: many sequences at different positions in one flat batch, keys and values in a
pool of fixed-size blocks addressed through per-sequence block tables (Kwon et al. 2023, PagedAttention).

The model's own modules and weights do the work; only the order of operations differs from
`Transformer.forward`: tokens of all sequences are concatenated ([T, h]), each has its own position, the
new keys/values are written into their pool slots, and attention reads each sequence's keys through its
block table. On CPU the read is a gather into `scaled_dot_product_attention` (`paged_attention`); a GPU
kernel taking the same arguments (query rows, pool, block tables, context lengths) can replace it.

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
from flopwise.serve.config import EngineConfig

CPU_KV_CAP = 4 << 30  # default ceiling of the KV pool on CPU (bytes): RAM is shared with everything else


class PagedKVCache:
    def __init__(self, cfg: ModelConfig, num_blocks: int, block_size: int, max_seqs: int, device, dtype,
                 block_states: bool):
        self.cfg = cfg
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape = (cfg.layers, num_blocks, cfg.kv_heads, block_size, cfg.head_dim)  # head-major inside a block
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.lfa_x = self.lfa_y = self.block_x = self.block_y = None
        if cfg.lfa:
            self.lfa_x = torch.zeros(max_seqs, cfg.layers, cfg.hidden, device=device, dtype=dtype)
            self.lfa_y = torch.zeros(max_seqs, cfg.layers, cfg.hidden // 2, device=device, dtype=dtype)
            if block_states:
                self.block_x = torch.zeros(num_blocks, cfg.layers, cfg.hidden, device=device, dtype=dtype)
                self.block_y = torch.zeros(num_blocks, cfg.layers, cfg.hidden // 2, device=device, dtype=dtype)

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
    slot: int  # LFA state slot
    logits_from: int  # first chunk index whose logits are returned (len - 1 for the next token only)


@dataclass
class StepBatch:
    tokens: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    write_blocks: torch.Tensor  # [T] block and offset of each new key/value
    write_offsets: torch.Tensor
    logit_rows: torch.Tensor  # [R] rows whose logits are returned
    decode_rows: torch.Tensor | None = None  # sequences with one token this step (rows of the flat batch)
    decode_blocks: torch.Tensor | None = None  # [nd, B] their block tables (padded with block 0)
    decode_mask: torch.Tensor | None = None  # [nd, 1, 1, B * block_size]: which keys are theirs
    # prefill chunks: (first row, rows, block table or None when the chunk starts the sequence, keys, mask)
    prefills: list[tuple[int, int, torch.Tensor | None, int, torch.Tensor | None]] = field(default_factory=list)
    first_rows: torch.Tensor | None = None  # LFA: each sequence's first row, its slot, whether it is fresh
    state_slots: torch.Tensor | None = None
    fresh: torch.Tensor | None = None
    last_rows: torch.Tensor | None = None
    block_end_rows: torch.Tensor | None = None  # rows that complete a block, and that block
    block_end_ids: torch.Tensor | None = None


def build_batch(chunks: list[SeqChunk], block_size: int, device) -> StepBatch:
    tokens, positions, blocks, offsets, logit_rows = [], [], [], [], []
    decode_rows, decode_tables, decode_len, prefills = [], [], [], []
    first_rows, state_slots, fresh, last_rows, end_rows, end_ids = [], [], [], [], [], []
    row = 0
    for c in chunks:
        n = len(c.tokens)
        pos = range(c.num_computed, c.num_computed + n)
        tokens.extend(c.tokens)
        positions.extend(pos)
        blocks.extend(c.block_table[p // block_size] for p in pos)
        offsets.extend(p % block_size for p in pos)
        logit_rows.extend(range(row + c.logits_from, row + n))
        context = c.num_computed + n
        used = -(-context // block_size)
        if n == 1:
            decode_rows.append(row)
            decode_tables.append(c.block_table[:used])
            decode_len.append(context)
        elif c.num_computed == 0:  # a fresh prompt: its keys are all in this step, plain causal attention
            prefills.append((row, n, None, context, None))
        else:  # causal with an offset: query i sees keys 0 .. num_computed + i
            q_pos = torch.arange(c.num_computed, context, device=device)
            mask = torch.arange(context, device=device).unsqueeze(0) <= q_pos.unsqueeze(1)
            prefills.append((row, n, torch.tensor(c.block_table[:used], device=device), context, mask))
        first_rows.append(row)
        state_slots.append(c.slot)
        fresh.append(c.num_computed == 0)
        last_rows.append(row + n - 1)
        for p in range(-(-c.num_computed // block_size) * block_size + block_size - 1, context, block_size):
            end_rows.append(row + p - c.num_computed)  # rows that complete a block
            end_ids.append(c.block_table[p // block_size])
        row += n

    def t(values, dtype=torch.long):
        return torch.tensor(values, dtype=dtype, device=device)

    batch = StepBatch(t(tokens), t(positions), t(blocks), t(offsets), t(logit_rows), prefills=prefills)
    if decode_rows:
        width = max(len(b) for b in decode_tables)
        batch.decode_rows = t(decode_rows)
        batch.decode_blocks = t([b + [0] * (width - len(b)) for b in decode_tables])
        keys = torch.arange(width * block_size, device=device)
        batch.decode_mask = (keys.unsqueeze(0) < t(decode_len).unsqueeze(1))[:, None, None]
    batch.first_rows, batch.state_slots, batch.fresh = t(first_rows), t(state_slots), t(fresh, torch.bool)
    batch.last_rows = t(last_rows)
    batch.block_end_rows, batch.block_end_ids = t(end_rows), t(end_ids)
    return batch


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                    batch: StepBatch) -> torch.Tensor:
    """q [T, heads, d]; k/v [T, kv_heads, d] this step's keys and values; k_pool/v_pool [blocks, kv_heads,
    block_size, d] of one layer, already holding them. Returns [T, heads, d].

    Decoding sequences go together: their blocks are gathered ([nd, B, kv_heads, block, d]) and the query
    heads of each KV group meet that group's keys block by block, so grouped-query attention needs no
    repeated keys and the gathered blocks are never laid out again.
    A fresh prompt attends to this step's keys directly; a later chunk of a prompt reads its blocks with a
    causal mask offset by the tokens it already has."""
    out = torch.empty_like(q)
    kv_heads, block_size, d = k_pool.shape[1:]
    group = q.shape[1] // kv_heads
    gqa = group != 1

    def gather(pool: torch.Tensor, table: torch.Tensor) -> torch.Tensor:  # [n, B] -> [n, kv_heads, B * block, d]
        n, width = table.shape
        blocks = pool.index_select(0, table.flatten()).view(n, width, kv_heads, block_size, d)
        return blocks.transpose(1, 2).reshape(n, kv_heads, width * block_size, d)

    if batch.decode_rows is not None:
        # Block by block, without laying the keys out contiguously: scores [nd, B, kv_heads, group, block],
        # one softmax over all blocks of a sequence, then the weighted values summed over blocks.
        nd, width = batch.decode_blocks.shape
        index = batch.decode_blocks.flatten()
        kb = k_pool.index_select(0, index).view(nd, width, kv_heads, block_size, d)
        vb = v_pool.index_select(0, index).view(nd, width, kv_heads, block_size, d)
        qd = q[batch.decode_rows].view(nd, 1, kv_heads, group, d)
        scores = torch.matmul(qd, kb.transpose(-1, -2)).float() * d**-0.5
        scores = scores.permute(0, 2, 3, 1, 4).reshape(nd, kv_heads, group, width * block_size)
        probs = scores.masked_fill(~batch.decode_mask, float("-inf")).softmax(-1).to(q.dtype)
        probs = probs.view(nd, kv_heads, group, width, block_size).permute(0, 3, 1, 2, 4)
        out[batch.decode_rows] = torch.matmul(probs, vb).sum(1).reshape(nd, -1, d)
    for start, n, blocks, context, mask in batch.prefills:
        qp = q[start : start + n].transpose(0, 1).unsqueeze(0)  # [1, heads, n, d]
        if blocks is None:
            kp = k[start : start + n].transpose(0, 1).unsqueeze(0)
            vp = v[start : start + n].transpose(0, 1).unsqueeze(0)
            op = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=gqa)
        else:
            kp = gather(k_pool, blocks.unsqueeze(0))[:, :, :context]
            vp = gather(v_pool, blocks.unsqueeze(0))[:, :, :context]
            op = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, enable_gqa=gqa)
        out[start : start + n] = op[0].transpose(0, 1)
    return out


def _filter(filt: LocalizedFilter, x: torch.Tensor, layer: int, cache: PagedKVCache, batch: StepBatch) -> torch.Tensor:
    """LFA over a flat batch: each row's previous row is its predecessor in the same sequence, or the
    sequence's saved state at the first row of its chunk (zeros for a fresh sequence)."""

    def shifted(values: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        prev = torch.cat([values.new_zeros(1, values.shape[1]), values[:-1]])
        carried = state[batch.state_slots, layer].to(values.dtype)
        prev[batch.first_rows] = torch.where(batch.fresh.unsqueeze(1), torch.zeros_like(carried), carried)
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
        cache.k[layer][batch.write_blocks, :, batch.write_offsets] = k
        cache.v[layer][batch.write_blocks, :, batch.write_offsets] = v
        o = paged_attention(q, k, v, cache.k[layer], cache.v[layer], batch)
        x = x + attn.wo(o.reshape(t, -1))
        m = block.mlp(block.ffn_norm(x).unsqueeze(0))
        x = x + (m[0] if isinstance(m, tuple) else m)[0]
    h = model.norm(x[batch.logit_rows])
    return model.output(h).float()
