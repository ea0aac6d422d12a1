"""Checkpoint directories: `<out>/checkpoints/step_NNNNNNNN/`, written whole or not at all.

Each holds the engine's DCP files (model + optimizer, by fully-qualified name), `trainer.json` (step,
data position, loss-guard state), `rng_rank<R>.pt`, `config.json` and `tokenizer.json`, so it is enough
to resume training, export or generate. The directory is written under a temporary name and renamed
into place, then `latest` is rewritten atomically; older checkpoints beyond `keep` are removed."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from flopwise.atomic import atomic_path, atomic_write_json, atomic_write_text
from flopwise.errors import CheckpointError

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def checkpoints_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def step_dirs(out: str | Path) -> list[Path]:
    root = checkpoints_dir(out)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest complete checkpoint under a run directory, or None."""
    root = checkpoints_dir(out)
    pointer = root / "latest"
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / "trainer.json").is_file():
            return candidate
    dirs = [d for d in step_dirs(out) if (d / "trainer.json").is_file()]
    return dirs[-1] if dirs else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint given as a run directory (its latest checkpoint) or a step directory."""
    path = Path(path)
    if (path / "trainer.json").is_file():
        return path
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is not None:
            return found
        raise CheckpointError(f"no checkpoint in {path} (expected {checkpoints_dir(path)}/step_*/)")
    raise CheckpointError(f"checkpoint {path} does not exist")


def save_checkpoint(out: str | Path, step: int, engine, trainer_state: dict, config: dict, tokenizer: Path | None,
                    keep: int, rank: int = 0, barrier=lambda: None) -> Path:
    root = checkpoints_dir(out)
    final = root / f"step_{step:08d}"
    tmp = root / f".step_{step:08d}.tmp"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    engine.save(tmp)
    torch.save(_rng_state(), tmp / f"rng_rank{rank}.pt")
    barrier()
    if rank == 0:
        atomic_write_json(tmp / "config.json", config)
        if tokenizer is not None and tokenizer.is_file():
            shutil.copyfile(tokenizer, tmp / "tokenizer.json")
        atomic_write_json(tmp / "trainer.json", trainer_state)  # written last: marks the directory complete
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        atomic_write_text(root / "latest", final.name + "\n")
        for old in step_dirs(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def read_trainer_state(directory: Path) -> dict:
    try:
        return json.loads((directory / "trainer.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {directory}: unreadable trainer.json ({exc})") from None


def read_config(directory: Path) -> dict:
    try:
        return json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {directory}: unreadable config.json ({exc})") from None


def load_rng(directory: Path, rank: int = 0) -> None:
    path = directory / f"rng_rank{rank}.pt"
    if not path.is_file():
        path = directory / "rng_rank0.pt"  # resharded resume: fewer/more ranks than saved
    if path.is_file():
        state = torch.load(path, weights_only=False)
        torch.set_rng_state(state["cpu"])
        if torch.cuda.is_available() and state.get("cuda") is not None:
            try:
                torch.cuda.set_rng_state(state["cuda"])
            except RuntimeError:
                pass


def _rng_state() -> dict:
    return {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def export_safetensors(checkpoint: str | Path, dest: str | Path) -> Path:
    """Write the model weights of a checkpoint (any layout) as one safetensors file for a single device."""
    from safetensors.torch import save_file

    from flopwise.train.config import config_from_dict
    from flopwise.train.engine import build_model, load_engine_state

    directory = resolve_checkpoint(checkpoint)
    job = config_from_dict(read_config(directory)["job"])
    model = build_model(job.model_config(), job.train.seed)
    load_engine_state(model, None, directory)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if job.model_config().tie_embeddings:
        state.pop("output.weight", None)  # tied: stored once as tok_embeddings.weight
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        save_file(state, str(tmp), metadata={"flopwise_config": json.dumps(job.model_config().to_dict())})
    return dest
