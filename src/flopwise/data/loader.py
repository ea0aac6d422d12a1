"""Deterministic, resumable batches of fixed-length windows from token shards.

Each file is cut into windows of seq_len + 1 tokens starting every seq_len tokens (inputs and shifted
targets). Epoch e visits all windows in a permutation drawn from (seed, e). The loader's whole state is
one integer, the global sample position, so resuming is exact, and a global batch is the same set of
windows whatever the data-parallel degree: rank r of W takes its contiguous slice of the global batch.
"""

from __future__ import annotations

import numpy as np
import torch

from flopwise.data.shards import TokenShards
from flopwise.errors import DataError
from flopwise.layout import local_batch


class TokenLoader:
    def __init__(
        self,
        shards: TokenShards,
        seq_len: int,
        global_batch: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        shuffle: bool = True,
    ):
        self.shards = shards
        self.seq_len = seq_len
        self.global_batch = global_batch
        self.local_batch = local_batch(global_batch, world)
        self.seed = seed
        self.rank = rank
        self.shuffle = shuffle
        counts = [max(0, (a.size - 1) // seq_len) for a in shards.arrays]
        self.windows = int(sum(counts))
        if self.windows == 0:
            raise DataError(
                f"split {shards.split!r} of {shards.directory} has {shards.tokens} tokens: too few for one "
                f"window of {seq_len + 1}"
            )
        self._file_starts = np.cumsum([0] + counts)
        self.position = 0
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])

    def _window_index(self, sample: int) -> int:
        epoch, offset = divmod(sample, self.windows)
        if not self.shuffle:
            return offset
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(self.windows)
            self._perm_epoch = epoch
        return int(self._perm[offset])

    def window(self, index: int) -> np.ndarray:
        file = int(np.searchsorted(self._file_starts, index, side="right") - 1)
        start = (index - self._file_starts[file]) * self.seq_len
        return np.asarray(self.shards.arrays[file][start : start + self.seq_len + 1], dtype=np.int64)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each [local_batch, seq_len] int64; advances by one global batch."""
        first = self.position + self.rank * self.local_batch
        rows = [self.window(self._window_index(first + i)) for i in range(self.local_batch)]
        self.position += self.global_batch
        data = torch.from_numpy(np.stack(rows))
        return data[:, :-1], data[:, 1:]

    def __iter__(self):
        while True:
            yield self.next_batch()
