"""Data: sources -> stages -> tokenizer -> token shards + loader. The shard format lives in shards.py."""

from flopwise.data.loader import TokenLoader
from flopwise.data.shards import ShardManifest, ShardWriter, TokenShards, read_manifest, write_manifest

__all__ = ["ShardManifest", "ShardWriter", "TokenLoader", "TokenShards", "read_manifest", "write_manifest"]
