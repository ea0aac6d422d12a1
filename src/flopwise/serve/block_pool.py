"""The KV-cache block pool: a fixed number of blocks, reference counts, and prefix caching.

A full block is named by a hash of its tokens and of the hash of the block before it, so equal names mean
equal prefixes. A block whose last user left keeps its name and goes to the back of the free list; it is
reused by a later request with the same prefix, or recycled (and forgotten) once it reaches the front."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


def block_hash(parent: int | None, tokens: Sequence[int]) -> int:
    return hash((parent, tuple(tokens)))


def prefix_hashes(tokens: Sequence[int], block_size: int) -> list[int]:
    """Names of the full blocks of `tokens`, in order."""
    hashes: list[int] = []
    parent = None
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = block_hash(parent, tokens[start : start + block_size])
        hashes.append(parent)
    return hashes


class BlockPool:
    def __init__(self, num_blocks: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.caching = enable_prefix_caching
        self.ref = [0] * num_blocks
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))  # front: evicted first
        self.hash_of: dict[int, int] = {}
        self.by_hash: dict[int, int] = {}
        self.queries = 0  # prefix-cache lookups, in blocks
        self.hits = 0

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by live sequences (cached-but-free blocks count as free)."""
        return 1.0 - self.num_free / self.num_blocks

    def allocate(self, n: int) -> list[int] | None:
        if n > len(self.free):
            return None
        blocks = []
        for _ in range(n):
            block, _ = self.free.popitem(last=False)
            name = self.hash_of.pop(block, None)
            if name is not None and self.by_hash.get(name) == block:
                del self.by_hash[name]
            self.ref[block] = 1
            blocks.append(block)
        return blocks

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block; blocks nobody holds become free, the tail of a sequence first
        (so the shared beginnings of prompts stay cached longest)."""
        for block in reversed(blocks):
            self.ref[block] -= 1
            if self.ref[block] == 0:
                self.free[block] = None  # a cached block is recycled last
                if block not in self.hash_of:
                    self.free.move_to_end(block, last=False)  # a nameless one first

    def lookup(self, hashes: Sequence[int]) -> list[int]:
        """The cached blocks for the longest run of leading `hashes`; each gains a reference."""
        if not self.caching:
            return []
        hit = []
        self.queries += len(hashes)
        for name in hashes:
            block = self.by_hash.get(name)
            if block is None:
                break
            hit.append(block)
        for block in hit:
            if self.ref[block] == 0:
                del self.free[block]
            self.ref[block] += 1
        self.hits += len(hit)
        return hit

    def name(self, block: int, name: int) -> None:
        """Record that a (now full) block holds the prefix `name`."""
        if not self.caching or block in self.hash_of:
            return
        if name not in self.by_hash:
            self.by_hash[name] = block
            self.hash_of[block] = name

    def reset_prefix_cache(self) -> None:
        self.hash_of.clear()
        self.by_hash.clear()
