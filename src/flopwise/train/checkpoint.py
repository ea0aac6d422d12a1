"""Checkpoint directories: `<out>/checkpoints/step_NNNNNNNN/`, written whole or not at all.

Each holds the engine's DCP files (model + optimizer, by fully-qualified name), `trainer.json` (step,
data position, loss-guard state), `rng_rank<R>.pt`, `config.json` and `tokenizer.json`, so it is enough
to resume training, export or generate, and `checksums.json` (size and sha256 of every other file; the
ranks hash a share each), written last. The directory is written under a temporary name and renamed
into place, then `latest` is rewritten atomically; older checkpoints beyond `keep` are removed. A save
that fails (a full disk) removes its temporary directory and leaves the previous checkpoint as it was.

`choose_checkpoint` is the resume side: the newest checkpoint whose files match their checksums and whose
trainer state parses, with the reason for every newer one it passed over."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import torch

from flopwise.atomic import atomic_path, atomic_write_json, atomic_write_text
from flopwise.data.shards import sha256_file
from flopwise.errors import CheckpointError
from flopwise.outputs import output_file
from flopwise.train.signals import Stopped, find_wrapped, reraise_stop

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{8})$")
CHECKSUMS = "checksums.json"


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
    """A checkpoint to read (export, generate, serve) given as a run directory (its newest intact checkpoint; a
    newer damaged one is skipped with a warning, as a resume skips it) or a step directory (refused, naming the
    damage, when it is damaged)."""
    path = Path(path)
    if (path / "trainer.json").is_file():
        problems = checkpoint_problems(path, to_resume=False)
        if problems:
            raise CheckpointError(f"checkpoint {path} is damaged: {'; '.join(problems)}")
        return path
    if path.is_dir():
        if latest_checkpoint(path) is not None:
            found, damaged = choose_checkpoint(path, to_resume=False)
            for directory, reason in damaged:
                log.warning("warning: checkpoint %s is damaged (%s); %s", directory, reason,
                            f"reading {found.name}" if found is not None else "no older one")
            if found is not None:
                return found
            raise CheckpointError(f"no intact checkpoint in {path}: the newest, {damaged[0][0].name}, "
                                  f"{damaged[0][1]}")
        raise CheckpointError(f"no checkpoint in {path} (expected {checkpoints_dir(path)}/step_*/)")
    if path.exists():
        raise CheckpointError(f"checkpoint {path} is a file: give a run directory or a step directory")
    raise CheckpointError(f"checkpoint {path} does not exist")


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(obj) -> list:
    """`obj` from every rank (a collective in a distributed job; [obj] otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def _failure_reason(exc: BaseException) -> str:
    """One line for a failed write: the OS error's text where there is one (DCP wraps them per rank)."""
    reraise_stop(exc)
    found = find_wrapped(exc, OSError)
    if found is not None and found.strerror:
        return found.strerror
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _file_sums(directory: Path, names: list[str]) -> dict:
    return {name: {"bytes": (directory / name).stat().st_size, "sha256": sha256_file(directory / name)}
            for name in names}


def save_checkpoint(out: str | Path, step: int, engine, trainer_state: dict, config: dict, tokenizer: Path | None,
                    keep: int, rank: int = 0, barrier=lambda: None) -> Path:
    root = checkpoints_dir(out)
    final = root / f"step_{step:08d}"
    tmp = root / f".step_{step:08d}.tmp"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".step_*.tmp"):  # left by a killed save; the run lock keeps other runs out
            shutil.rmtree(stale, ignore_errors=True)
    barrier()
    failure = None
    try:
        engine.save(tmp)
        torch.save(_rng_state(), tmp / f"rng_rank{rank}.pt")
        if rank == 0:
            atomic_write_json(tmp / "config.json", config)
            if tokenizer is not None and tokenizer.is_file():
                shutil.copyfile(tokenizer, tmp / "tokenizer.json")
            atomic_write_json(tmp / "trainer.json", trainer_state)
    except (KeyboardInterrupt, SystemExit, Stopped):
        raise
    except BaseException as exc:  # DCP's CheckpointException derives from BaseException
        failure = _failure_reason(exc)
    _raise_if_failed(_gather(failure), out, step, tmp, rank)
    _, world = _rank_world()
    sums, failure = {}, None
    try:
        sums = _file_sums(tmp, sorted(p.name for p in tmp.iterdir())[rank::world])
    except OSError as exc:
        failure = _failure_reason(exc)
    gathered = _gather((sums, failure))
    _raise_if_failed([f for _, f in gathered], out, step, tmp, rank)
    failure = None
    if rank == 0:
        try:
            files = {k: v for s, _ in gathered for k, v in s.items()}
            atomic_write_json(tmp / CHECKSUMS, {"step": step, "files": files})  # written last: marks it complete
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            atomic_write_text(root / "latest", final.name + "\n")
        except OSError as exc:
            failure = _failure_reason(exc)
    _raise_if_failed(_gather(failure), out, step, tmp, rank)
    if rank == 0:
        for old in step_dirs(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def _raise_if_failed(failures: list, out, step: int, tmp: Path, rank: int) -> None:
    reasons = [f for f in failures if f]
    if not reasons:
        return
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back; the previous checkpoint is untouched
    previous = latest_checkpoint(out)
    kept = f"the previous checkpoint {previous} is intact" if previous else "there is no earlier checkpoint"
    raise CheckpointError(f"cannot write checkpoint step {step} in {checkpoints_dir(out)}: {reasons[0]}; {kept}")


def config_problem(directory: Path) -> str | None:
    """What is wrong with a checkpoint's config.json (the job and the model it was saved for), or None."""
    return _check_json(directory, "config.json", {"job": dict, "model": dict})


def _check_json(directory: Path, name: str, keys: dict) -> str | None:
    try:
        text = (directory / name).read_text()
    except FileNotFoundError:
        return f"{name} is missing"
    except (OSError, ValueError) as exc:
        return f"{name} is unreadable ({exc})"
    if not text.strip():
        return f"{name} is empty"
    try:
        data = json.loads(text)
    except ValueError as exc:
        return f"{name} is not valid JSON ({exc})"
    if not isinstance(data, dict):
        return f"{name} does not hold an object"
    for key, kind in keys.items():
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            return f"{name} lacks {key!r}"
    return None


def checkpoint_problems(directory: Path, to_resume: bool = True) -> list[str]:
    """What is wrong with a checkpoint directory: files that differ from checksums.json (each rank checks a
    share; a collective in a distributed job), a trainer.json or config.json that does not parse, this rank's
    RNG state that does not load. Empty when it is intact. A checkpoint from before checksums is checked
    for the rest. `to_resume` False: only what reading the weights needs (export, generate, serve)."""
    rank, world = _rank_world()
    problems = []
    try:
        listed = json.loads((directory / CHECKSUMS).read_text())["files"]
        assert isinstance(listed, dict)
    except FileNotFoundError:
        listed = {}
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        listed = {}
        problems.append(f"{CHECKSUMS} is unreadable")
    # reading the weights checks every file but the two the trainer rewrites by hand's reach, parsed below (a
    # hand-edited config.json, e.g. one pointing at moved shards, still reads); the tokenizer is checked
    names = sorted(n for n in listed if to_resume or n not in ("config.json", "trainer.json"))
    for name in names[rank::world]:
        path, want = directory / name, listed[name]
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != want.get("bytes"):
            problems.append(f"{name} has {path.stat().st_size} bytes, {want.get('bytes')} were written")
        elif sha256_file(path) != want.get("sha256"):
            problems.append(f"{name} does not match its sha256")
    # to read the weights (export, generate, serve) the trainer's own state need not be there: a checkpoint written
    # outside a training run (serve.toy) has none
    trainer_keys = {"step": int, "loader": dict, "guard": dict} if to_resume else {"step": int}
    problems += [p for p in (_check_json(directory, "trainer.json", trainer_keys), config_problem(directory)) if p]
    if not listed and to_resume:
        try:
            _read_rng(directory, rank)
        except CheckpointError as exc:
            problems.append(str(exc))
    return sorted({p for ps in _gather(problems) for p in ps})


def choose_checkpoint(out: str | Path, to_resume: bool = True) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest intact checkpoint of a run, and (checkpoint, reason) for each newer damaged one (`to_resume`
    False: intact enough to read its weights, checkpoint_problems)."""
    damaged = []
    for directory in reversed(step_dirs(out)):
        problems = checkpoint_problems(directory, to_resume)
        if not problems:
            return directory, damaged
        damaged.append((directory, "; ".join(problems)))
    return None, damaged


def check_same_model(directory: Path, model: dict) -> None:
    """Refuse, in one line, to resume a checkpoint saved for another model shape."""
    saved = read_config(directory).get("model") or {}
    differ = [f"{k} {saved.get(k)!r} -> {model.get(k)!r}" for k in sorted(set(saved) | set(model))
              if saved.get(k) != model.get(k)]
    if differ:
        raise CheckpointError(
            f"checkpoint {directory} holds another model ({', '.join(differ[:4])}{', ...' if len(differ) > 4 else ''}): "
            "resume with the preset and model settings it was trained with, or use another --out"
        )


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


def _read_rng(directory: Path, rank: int) -> dict | None:
    path = directory / f"rng_rank{rank}.pt"
    if not path.is_file():
        path = directory / "rng_rank0.pt"  # resharded resume: fewer/more ranks than saved
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=False)
        assert isinstance(state, dict) and torch.is_tensor(state["cpu"])
        return state
    except Exception:  # torch.load raises many kinds on a damaged file
        raise CheckpointError(f"{path.name} is damaged (it does not load)") from None


def load_rng(directory: Path, rank: int = 0) -> None:
    state = _read_rng(directory, rank)
    if state is not None:
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

    dest = output_file(dest, "export destination")  # before the model loads
    directory = resolve_checkpoint(checkpoint)
    job = config_from_dict(read_config(directory)["job"])
    model = build_model(job.model_config(), job.train.seed)
    load_engine_state(model, None, directory)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if job.model_config().tie_embeddings:
        state.pop("output.weight", None)  # tied: stored once as tok_embeddings.weight
    with atomic_path(dest) as tmp:
        save_file(state, str(tmp), metadata={"flopwise_config": json.dumps(job.model_config().to_dict())})
    return dest
