"""Deduplication: exact (content hash) and near (MinHash-LSH). Both are barriers.

A barrier cannot decide one document at a time: every work unit computes a fixed-size signature per
document (`signature`), then one reduce over all units in input order decides which documents go
(`reduce`), so the result is the same however the work is spread. The first document of a cluster in
input order is kept. `DedupStage.reduce` counts, as `Stage.process` does for per-document stages;
subclasses only find the duplicates (`find_duplicates`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import ClassVar

import numpy as np

from flopwise.data.stages.base import Stage
from flopwise.errors import ConfigError


class DedupStage(Stage):
    barrier = True
    reason: ClassVar[str] = ""  # the drop reason of every document this stage removes
    sig_dtype: np.dtype

    def signature(self, doc: dict) -> np.ndarray:
        raise NotImplementedError

    def find_duplicates(self, items: Iterable[tuple[str, np.ndarray]]) -> dict[str, str]:
        """items: (doc id, signature) in input order. Returns {dropped id: id of the kept duplicate}."""
        raise NotImplementedError

    def reduce(self, items: Iterable[tuple[str, np.ndarray | None]]) -> dict[str, str]:
        """items: (doc id, signature, or None where the stage does not apply) in input order; count them
        and return {dropped id: id of the kept duplicate}."""
        st = self.stats

        def signed(items) -> Iterator[tuple[str, np.ndarray]]:
            for doc_id, sig in items:
                st.docs_in += 1
                if sig is not None:
                    yield doc_id, sig

        dropped = self.find_duplicates(signed(items))
        st.docs_out = st.docs_in - len(dropped)
        st.drops[self.reason] = len(dropped)
        clusters: dict[str, list[str]] = {}
        for d, kept in dropped.items():
            clusters.setdefault(kept, []).append(d)
        st.extra = {
            "clusters": len(clusters),
            "examples": [
                {"kept": k, "removed": v[:5], "size": len(v) + 1} for k, v in list(clusters.items())[:20]
            ],
        }
        return dropped

    def apply(self, doc):  # barriers never drop per document
        return None


class ExactDedup(DedupStage):
    type = "exact_dedup"
    reason = "exact_duplicate"
    sig_dtype = np.dtype("V16")

    def signature(self, doc):
        import xxhash

        return np.frombuffer(
            xxhash.xxh3_128_digest(doc["text"].encode("utf-8", "surrogatepass")), dtype="V16"
        )[0]

    def find_duplicates(self, items):
        first: dict[bytes, str] = {}
        dropped: dict[str, str] = {}
        for doc_id, sig in items:
            key = bytes(sig)
            if key in first:
                dropped[doc_id] = first[key]
            else:
                first[key] = doc_id
        return dropped


class NearDedup(DedupStage):
    """MinHash signatures of word n-gram shingles, LSH (datasketch) at a Jaccard threshold. The first
    document of a cluster in input order is kept."""

    type = "near_dedup"
    reason = "near_duplicate"
    defaults = {"threshold": 0.8, "num_perm": 128, "ngram": 5, "seed": 1, "lowercase": True}

    def __init__(self, name, only_sources=None, **params):
        super().__init__(name, only_sources, **params)
        if not 0.0 < float(self.p["threshold"]) < 1.0:
            raise ConfigError(f"near_dedup.threshold = {self.p['threshold']}: must be in (0, 1)")
        if int(self.p["num_perm"]) < 16:
            raise ConfigError(f"near_dedup.num_perm = {self.p['num_perm']}: must be >= 16")
        self.sig_dtype = np.dtype(("<u4", (int(self.p["num_perm"]),)))
        self._perms = None

    def _permutations(self):
        if self._perms is None:
            from datasketch import MinHash

            self._perms = MinHash(
                num_perm=int(self.p["num_perm"]), seed=int(self.p["seed"]), scheme="legacy"
            ).permutations
        return self._perms

    def shingle_hashes(self, text: str) -> np.ndarray:
        """32-bit hashes of the word n-grams: each distinct word hashed once (xxh32), n-gram hashes
        combined from word hashes with numpy."""
        import xxhash

        words = (text.lower() if self.p["lowercase"] else text).split()
        if not words:
            words = [""]
        index: dict[str, int] = {}
        inv = np.fromiter((index.setdefault(w, len(index)) for w in words), dtype=np.int64, count=len(words))
        uniq = list(index)
        wh = np.fromiter(
            (xxhash.xxh32_intdigest(w.encode("utf-8", "surrogatepass")) for w in uniq),
            dtype=np.uint64,
            count=len(uniq),
        )[inv]
        n = min(int(self.p["ngram"]), len(words))
        m = len(words) - n + 1
        h = np.zeros(m, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(n):
                h = h * np.uint64(0x100000001B3) + wh[k : k + m]
            h ^= h >> np.uint64(29)
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(32)
        return np.unique(h & np.uint64(0xFFFFFFFF))

    def signature(self, doc):
        hv = self.shingle_hashes(doc["text"])
        a, b = self._permutations()
        # datasketch's MinHash.update_batch (legacy scheme), without building a MinHash object per document
        mersenne, max_hash = np.uint64((1 << 61) - 1), np.uint64((1 << 32) - 1)
        with np.errstate(over="ignore"):
            phv = np.bitwise_and((np.outer(hv, a) + b) % mersenne, max_hash)
        return phv.min(axis=0).astype("<u4")

    def find_duplicates(self, items):
        from datasketch import LeanMinHash, MinHashLSH

        lsh = MinHashLSH(threshold=float(self.p["threshold"]), num_perm=int(self.p["num_perm"]))
        dropped: dict[str, str] = {}
        for doc_id, sig in items:
            mh = LeanMinHash(seed=int(self.p["seed"]), hashvalues=sig.astype(np.uint64), scheme="legacy")
            match = lsh.query(mh)
            if match:
                dropped[doc_id] = min(match)  # deterministic: kept docs are inserted once, in order
            else:
                lsh.insert(doc_id, mh, check_duplication=False)
        return dropped
