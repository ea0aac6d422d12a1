"""The training loop: data, schedule, loss guard, metrics, evaluation and checkpoints around an engine.

Layout-agnostic: the engine (single device or parallel) does forward/backward and the optimizer step.
Events go to an `on_event` callback (the CLI renders them); library code never prints."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flopwise.data.loader import TokenLoader
from flopwise.data.shards import TokenShards
from flopwise.errors import ConfigError, FlopwiseError
from flopwise.flops import model_flops_per_token
from flopwise.hardware import detect
from flopwise.models.moe import moe_metrics
from flopwise.train import checkpoint as ckpt
from flopwise.train.config import JobConfig
from flopwise.train.engine import build_engine, resolve_device
from flopwise.train.loss_guard import LossGuard, Verdict
from flopwise.train.metrics import MetricsWriter, plot_losses
from flopwise.train.schedule import lr_at

log = logging.getLogger(__name__)
Event = Callable[[dict], None]


@dataclass
class TrainResult:
    out: Path
    steps: int
    final_loss: float | None
    eval_loss: float | None
    unigram_entropy: float | None
    checkpoint: Path | None
    plot: Path | None
    skipped_steps: int
    rollbacks: int
    history: list[dict] = field(default_factory=list)


def resolve_shards(job: JobConfig, progress: Callable[[str], None] | None = None) -> Path:
    """The job's shard directory; the embedded demo corpus when none is given: the Python standard library
    run through the data pipeline (normalise, code filters, deduplication, BPE, packing), cached by its key."""
    if job.data.shards:
        return Path(job.data.shards)
    from flopwise.data.pipeline import run_pipeline
    from flopwise.data.presets import stdlib_demo_config

    cfg = stdlib_demo_config("", vocab_size=job.model_config().vocab_size, cache_dir=Path(job.data.cache_dir).resolve())
    if progress:
        progress("preparing the embedded corpus (Python standard library) with the data pipeline")
    result = run_pipeline(cfg)
    if progress:
        kept = result.splits.get("train", {}).get("documents") if isinstance(result.splits.get("train"), dict) else None
        state = "reused from the cache" if result.cached else f"prepared in {result.seconds:.0f} s"
        progress(f"corpus {result.shard_dir} {state}" + (f" ({kept} training files)" if kept else ""))
    return result.shard_dir


def unigram_entropy(shards: TokenShards) -> float:
    """Entropy (nats/token) of the split's unigram distribution: the loss of a model that ignores context."""
    counts = np.zeros(shards.vocab_size, dtype=np.int64)
    for arr in shards.arrays:
        counts += np.bincount(arr, minlength=shards.vocab_size)[: shards.vocab_size]
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


class Trainer:
    def __init__(self, job: JobConfig, *, resume: bool = False, metrics_path: str | Path | None = None,
                 on_event: Event | None = None):
        self.job = job
        self.out = Path(job.out)
        self.resume = resume
        self.on_event = on_event or (lambda event: None)
        self.metrics = MetricsWriter(metrics_path if metrics_path is not None else self.out / "metrics.jsonl")

    def _emit(self, **event) -> None:
        if self.engine.is_logging_rank:
            self.on_event(event)

    def run(self) -> TrainResult:
        job = self.job
        existing = ckpt.latest_checkpoint(self.out)
        if existing is not None and not self.resume:
            raise ConfigError(
                f"{self.out} already holds a run (checkpoint {existing.name}); pass --resume to continue it "
                "or --out to start another"
            )
        # Measure the device peak first: on CPU it is a timed matmul, which other work would disturb.
        accel = detect(resolve_device(job.train.device))
        local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if accel.measured and local_procs > 1:  # a measured CPU peak is shared by this machine's ranks
            accel = dataclasses.replace(accel, peak_flops=accel.peak_flops / local_procs)
        shards_dir = resolve_shards(job, progress=lambda msg: self.on_event({"event": "prepare", "message": msg}))
        train_shards = TokenShards(shards_dir, "train")
        eval_shards = TokenShards(shards_dir, "eval") if "eval" in train_shards.manifest.splits else None
        model_cfg = job.model_config()
        if train_shards.vocab_size > model_cfg.vocab_size:
            raise ConfigError(
                f"model.vocab_size = {model_cfg.vocab_size} is smaller than the data's vocabulary "
                f"({train_shards.vocab_size} in {shards_dir})"
            )
        if job.seq_len > model_cfg.seq_len:
            raise ConfigError(f"train.seq_len = {job.seq_len}: exceeds the model context {model_cfg.seq_len}")

        self.engine = engine = build_engine(job)
        per_rank = job.train.global_batch // engine.data_world if job.train.global_batch % engine.data_world == 0 else 0
        if per_rank == 0 or per_rank % engine.micro_batch:
            raise ConfigError(
                f"train.global_batch = {job.train.global_batch} must split into {engine.data_world} data-parallel "
                f"rank(s) x whole micro-batches of {engine.micro_batch} (train.micro_batch = {job.train.micro_batch})"
            )
        loader = TokenLoader(train_shards, job.seq_len, job.train.global_batch, job.train.seed,
                             engine.data_rank, engine.data_world)
        eval_batches = self._eval_batches(eval_shards, engine) if eval_shards is not None else []
        eod = train_shards.eod_id
        guard = LossGuard(job.guard)
        tokenizer = shards_dir / train_shards.manifest.tokenizer_file if train_shards.manifest.tokenizer_file else None
        saved_config = {"job": job.to_dict(), "model": model_cfg.to_dict(), "shards": str(shards_dir)}

        step = 0
        if existing is not None:
            state = ckpt.read_trainer_state(existing)
            engine.load(existing)
            loader.load_state_dict(state["loader"])
            guard.load_state_dict(state["guard"])
            ckpt.load_rng(existing, getattr(engine, "rank", 0))
            step = state["step"]
            if engine.is_logging_rank:
                self.metrics.truncate_after(step)
            self._emit(event="resume", step=step, checkpoint=str(existing))

        flops_tok = model_flops_per_token(model_cfg, job.seq_len)
        entropy = unigram_entropy(train_shards) if engine.is_logging_rank else None
        self._emit(event="start", step=step, steps=job.train.steps, layout=engine.layout,
                   params=sum(p.numel() for p in engine.model.parameters()) if hasattr(engine, "model") else None,
                   device=str(engine.device), accelerator=accel.name, peak_flops=accel.peak_flops,
                   peak_label=accel.peak_label, unigram_entropy=entropy, shards=str(shards_dir),
                   train_tokens=train_shards.tokens,
                   pipeline=engine.describe_pipeline() if hasattr(engine, "describe_pipeline") else None)

        def save(at_step: int) -> Path:
            state = {"step": at_step, "loader": loader.state_dict(), "guard": guard.state_dict(),
                     "tokens": at_step * job.train.global_batch * job.seq_len}
            path = ckpt.save_checkpoint(self.out, at_step, engine, state, saved_config, tokenizer,
                                        job.checkpoint.keep, getattr(engine, "rank", 0),
                                        getattr(engine, "barrier", lambda: None))
            self._emit(event="checkpoint", step=at_step, path=str(path))
            return path

        last_ckpt = existing
        history: list[dict] = []
        tokens_per_step = job.train.global_batch * job.seq_len
        window_start, window_tokens, last_loss, eval_loss = time.perf_counter(), 0, None, None
        while step < job.train.steps:
            lr = lr_at(step, lr=job.train.lr, min_lr=job.train.min_lr, warmup=job.train.warmup_steps,
                       total=job.train.steps)
            inputs, targets = loader.next_batch()
            loss = engine.forward_backward(inputs, targets, eod)
            verdict = guard.check(loss)
            if verdict is not Verdict.OK:
                engine.zero_grad()
                window_tokens += tokens_per_step
                if verdict is Verdict.SKIP:
                    self._emit(event="skip", step=step + 1, loss=loss, skipped=guard.skipped)
                    continue
                if last_ckpt is None:
                    raise FlopwiseError(
                        f"loss diverged at step {step + 1} ({job.guard.max_consecutive} bad steps in a row, last "
                        f"{loss:.4g}) and there is no checkpoint to roll back to"
                    )
                position = loader.position
                engine.load(last_ckpt)
                state = ckpt.read_trainer_state(last_ckpt)
                step = state["step"]
                loader.position = position  # keep moving forward: do not replay the batches that spiked
                self._emit(event="rollback", step=step, checkpoint=str(last_ckpt), loss=loss,
                           rollbacks=guard.rollbacks)
                continue
            grad_norm = engine.clip_and_step(lr)
            step += 1
            last_loss = loss
            window_tokens += tokens_per_step
            record = None
            if step % job.train.log_every == 0 or step == job.train.steps:
                elapsed = time.perf_counter() - window_start
                tps = window_tokens / elapsed if elapsed > 0 else 0.0
                world = getattr(engine, "world_size", 1)
                mem, mem_label = engine.peak_memory()
                record = {
                    "step": step, "loss": round(loss, 6), "lr": lr, "grad_norm": round(grad_norm, 6),
                    "tokens_per_s": round(tps, 2), "tokens_per_s_per_device": round(tps / world, 2),
                    "mfu": round(tps / world * flops_tok / accel.peak_flops, 6) if accel.peak_flops else 0.0,
                    "peak_memory_bytes": mem, "memory_label": mem_label, "skipped_steps": guard.skipped,
                    **moe_metrics(getattr(engine, "model", None)),  # MoE: auxiliary losses, load; {} if dense
                }
            do_eval = eval_batches and job.train.eval_every and (step % job.train.eval_every == 0 or step == job.train.steps)
            if do_eval:
                eval_loss = self._evaluate(engine, eval_batches, eod)
                record = record or {"step": step, "loss": round(loss, 6)}
                record["eval_loss"] = round(eval_loss, 6)
            if record is not None:
                history.append(record)
                if engine.is_logging_rank:
                    self.metrics.write(record)
                self._emit(event="log", **record)
            if job.checkpoint.every and step % job.checkpoint.every == 0 and step != job.train.steps:
                last_ckpt = save(step)
            if record is not None and "tokens_per_s" in record:
                window_start, window_tokens = time.perf_counter(), 0
        if last_ckpt is None or ckpt.read_trainer_state(last_ckpt)["step"] != step:
            last_ckpt = save(step)
        plot = None
        if engine.is_logging_rank:
            plot = plot_losses(self.metrics.path, self.out / "loss.png", title=f"{job.preset} ({engine.layout})")
        if eval_loss is None and eval_batches:
            eval_loss = self._evaluate(engine, eval_batches, eod)
        result = TrainResult(self.out, step, last_loss, eval_loss, entropy, last_ckpt, plot, guard.skipped,
                             guard.rollbacks, history)
        self._emit(event="end", step=step, final_loss=last_loss, eval_loss=eval_loss, unigram_entropy=entropy,
                   checkpoint=str(last_ckpt), plot=str(plot) if plot else None, skipped=guard.skipped,
                   rollbacks=guard.rollbacks)
        if hasattr(engine, "close"):
            engine.close()
        return result

    def _eval_batches(self, shards: TokenShards, engine) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed held-out set: the first eval_batches global batches of windows, in file order."""
        job = self.job
        try:
            loader = TokenLoader(shards, job.seq_len, job.train.global_batch, job.train.seed,
                                 engine.data_rank, engine.data_world, shuffle=False)
        except FlopwiseError:
            return []
        count = min(job.train.eval_batches, max(1, loader.windows // job.train.global_batch))
        return [loader.next_batch() for _ in range(count)]

    @staticmethod
    def _evaluate(engine, batches, eod) -> float:
        return sum(engine.eval_loss(x, y, eod) for x, y in batches) / len(batches)


def train(job: JobConfig, *, resume: bool = False, metrics_path=None, on_event: Event | None = None) -> TrainResult:
    return Trainer(job, resume=resume, metrics_path=metrics_path, on_event=on_event).run()


def load_checkpoint_config(path: str | Path) -> tuple[Path, dict]:
    directory = ckpt.resolve_checkpoint(path)
    return directory, ckpt.read_config(directory)


