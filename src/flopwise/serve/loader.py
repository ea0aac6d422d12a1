"""Load a checkpoint for serving: the model in eval mode, its tokenizer and its end-of-document id.

The end-of-document id is the one the data was packed with: read from the shard manifest the checkpoint
was trained on, else from the tokenizer's one special token (the data pipeline trains the tokenizer with
exactly one, the end-of-document token), else there is none and only max_tokens and stops end a request."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from flopwise.errors import CheckpointError, FlopwiseError
from flopwise.models import Transformer
from flopwise.train.checkpoint import read_config, resolve_checkpoint
from flopwise.train.config import config_from_dict
from flopwise.train.engine import build_model, load_engine_state, resolve_device

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    model: Transformer
    tokenizer: object  # tokenizers.Tokenizer
    eod_id: int | None
    name: str
    directory: Path

    @property
    def max_model_len(self) -> int:
        return self.model.cfg.seq_len

    @property
    def device(self) -> torch.device:
        return self.model.rope_cos.device


def serving_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "bf16" or (dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def load_tokenizer(directory: Path):
    from tokenizers import Tokenizer

    path = directory / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no tokenizer.json")
    return Tokenizer.from_file(str(path))


def end_of_document_id(saved_config: dict, tokenizer) -> int | None:
    """The data's end-of-document id: the shard manifest's, else the tokenizer's single special token."""
    from flopwise.data.shards import read_manifest

    shards = saved_config.get("shards")
    if shards:
        try:
            return read_manifest(shards).eod_id
        except FlopwiseError as exc:
            log.info("shard manifest unavailable (%s); taking the end-of-document id from the tokenizer", exc)
    special = [tid for tid, tok in tokenizer.get_added_tokens_decoder().items() if tok.special]
    if len(special) == 1:
        return int(special[0])
    log.warning("no end-of-document id found: generation stops only at max_tokens or a stop condition")
    return None


def load_served_model(path: str | Path, device: str = "auto", dtype: str = "auto", name: str | None = None) -> ServedModel:
    dev = resolve_device(device)  # a bad device fails before the model loads
    directory = resolve_checkpoint(path)
    saved = read_config(directory)
    job = config_from_dict(saved["job"])
    tokenizer = load_tokenizer(directory)
    model = build_model(job.model_config(), job.train.seed)
    load_engine_state(model, None, directory)
    model = model.to(device=dev, dtype=serving_dtype(dtype, dev)).eval()
    model.rope_cos.data = model.rope_cos.float()  # RoPE tables stay fp32 (the model applies them in fp32)
    model.rope_sin.data = model.rope_sin.float()
    for p in model.parameters():
        p.requires_grad_(False)
    run_dir = directory.parent.parent if directory.parent.name == "checkpoints" else directory
    return ServedModel(model, tokenizer, end_of_document_id(saved, tokenizer), name or run_dir.name, directory)
