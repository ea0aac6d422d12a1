"""The training loop: data, schedule, loss guard, metrics, evaluation and checkpoints around an engine.

Layout-agnostic: the engine (single device or parallel) does forward/backward and the optimizer step.
Events go to an `on_event` callback (the CLI renders them); library code never prints."""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flopwise.data.loader import TokenLoader
from flopwise.data.shards import TokenShards
from flopwise.errors import CheckpointError, ConfigError, FlopwiseError
from flopwise.flops import model_flops_per_token, param_counts
from flopwise.hardware import cpu_seconds, detect
from flopwise.models.moe import moe_metrics
from flopwise.train import checkpoint as ckpt
from flopwise.train import forecast
from flopwise.train.config import JobConfig, resolve_layout
from flopwise.train.engine import build_engine, peak_memory, refuse_tf32, resolve_device
from flopwise.train.loss_guard import LossGuard, Verdict
from flopwise.train.memory_probe import model_state_bytes, saved_tensor_peak
from flopwise.train.metrics import MetricsWriter, plot_losses
from flopwise.train.preempt import Preempted, StopFlag
from flopwise.train.run_lock import run_lock
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

    cache_dir = Path(job.data.cache_dir).resolve() if job.data.cache_dir else None  # None: the data cache's default
    cfg = stdlib_demo_config("", vocab_size=job.model_config().vocab_size, cache_dir=cache_dir)
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
        """Train under the run directory's lock (rank 0 takes it; flopwise.train.run_lock). SIGTERM while
        training asks for a checkpoint and a stop (flopwise.train.preempt); outside it, the CLI's handler ends
        the run at once (flopwise.train.signals)."""
        rank0 = os.environ.get("RANK", "0") == "0"
        with run_lock(self.out) if rank0 else contextlib.nullcontext() as took_over, StopFlag() as stop:
            if took_over:
                self.on_event({"event": "warning", "message": f"{self.out}: {took_over}"})
            return self._run(stop)

    def _run(self, stop: StopFlag) -> TrainResult:
        job = self.job
        existing = ckpt.latest_checkpoint(self.out)
        if existing is not None and not self.resume:
            raise ConfigError(
                f"{self.out} already holds a run (checkpoint {existing.name}); pass --resume to continue it "
                "or --out to start another"
            )
        # refuse what can be refused before the data and the model are prepared (minutes on a fresh cache)
        context = job.model_config().seq_len
        if job.seq_len > context:
            raise ConfigError(f"train.seq_len = {job.seq_len}: exceeds the model context {context}")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == job.parallel.world_size:  # else the engine says how to launch the ranks the layout needs
            resolve_layout(job, world)
        if existing is not None and ckpt.config_problem(existing) is None:  # a damaged one: judged with the others
            ckpt.check_same_model(existing, job.model_config().to_dict())
        # Measure the device peak first: on CPU it is a timed matmul, which other work would disturb.
        # A CPU rank measures what its own threads reach while the other ranks run theirs (the launcher gives
        # each cores / ranks threads): that is its share of the machine, not to be divided again.
        device = resolve_device(job.train.device)
        accel = detect(device)
        refuse_tf32(job.train.dtype, device, accel)  # before the data is prepared
        shards_dir = resolve_shards(job, progress=lambda msg: self.on_event({"event": "prepare", "message": msg}))
        if job.data.verify:
            self.on_event({"event": "prepare", "message": f"verifying the sha256 of every shard in {shards_dir}"})
        train_shards = TokenShards(shards_dir, "train", verify=job.data.verify)
        eval_shards = (TokenShards(shards_dir, "eval", verify=job.data.verify)
                       if "eval" in train_shards.manifest.splits else None)
        model_cfg = job.model_config()
        if train_shards.vocab_size > model_cfg.vocab_size:
            raise ConfigError(
                f"model.vocab_size = {model_cfg.vocab_size} is smaller than the data's vocabulary "
                f"({train_shards.vocab_size} in {shards_dir})"
            )

        memory_before = peak_memory(resolve_device(job.train.device))[0]
        self.engine = engine = build_engine(job, accel)
        accel = engine.accelerator  # on CPU ranks: the best peak any rank measured, so MFU agrees across ranks
        if existing is not None:
            existing = self._intact_checkpoint()
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
            ckpt.load_rng(existing, engine.rank)
            step = state["step"]
            if engine.is_logging_rank:
                torn = self.metrics.truncate_after(step)
                if torn:
                    self._emit(event="warning", message=f"{self.metrics.path}: dropped {torn} torn or unreadable "
                                                        "line(s) (an interrupted write)")
            self._emit(event="resume", step=step, checkpoint=str(existing))
        elif engine.is_logging_rank:
            self.metrics.start()

        flops_tok = model_flops_per_token(model_cfg, job.seq_len)
        entropy = unigram_entropy(train_shards) if engine.is_logging_rank else None
        plan = engine.plan
        self._emit(event="start", step=step, steps=job.train.steps, layout=engine.layout.describe(),
                   params=param_counts(model_cfg).total,  # the whole model, whatever share this rank holds
                   device=str(engine.device), accelerator=accel.name, peak_flops=accel.peak_flops,
                   peak_label=accel.peak_label, unigram_entropy=entropy, shards=str(shards_dir),
                   train_tokens=train_shards.tokens, split=list(engine.layout.split),
                   pipeline=forecast.stage_table(plan) if plan is not None and engine.layout.pp > 1 else None,
                   predicted_step_s=plan.step_time if plan is not None else None)

        def save(at_step: int) -> Path:
            state = {"step": at_step, "loader": loader.state_dict(), "guard": guard.state_dict(),
                     "tokens": at_step * job.train.global_batch * job.seq_len}
            path = ckpt.save_checkpoint(self.out, at_step, engine, state, saved_config, tokenizer,
                                        job.checkpoint.keep, engine.rank, engine.barrier)
            self._emit(event="checkpoint", step=at_step, path=str(path))
            return path

        last_ckpt = existing
        rollbacks_here = 0  # rollbacks to last_ckpt: a loss that diverges again each time ends the run
        history: list[dict] = []
        tokens_per_step = job.train.global_batch * job.seq_len
        window_start, window_tokens, last_loss, eval_loss = time.perf_counter(), 0, None, None
        tensors_measured = None
        step_times: list[float] = []  # batch, forward/backward and optimizer step; no eval or checkpoint
        clock = cpu_seconds if engine.device.type == "cpu" else time.perf_counter
        while step < job.train.steps:
            if stop.requested:  # SIGTERM between steps: save, then stop with PREEMPTED_EXIT (flopwise.train.preempt)
                if last_ckpt is None or ckpt.read_trainer_state(last_ckpt)["step"] != step:
                    last_ckpt = save(step)
                self._emit(event="preempted", step=step, checkpoint=str(last_ckpt))
                engine.close()
                raise Preempted(step, last_ckpt)
            lr = lr_at(step, lr=job.train.lr, min_lr=job.train.min_lr, warmup=job.train.warmup_steps,
                       total=job.train.steps)
            step_start = clock()
            inputs, targets = loader.next_batch()
            probe = step + 1 == job.train.steps and engine.device.type == "cpu"  # CPU: no allocator peak
            with saved_tensor_peak(engine) if probe else contextlib.nullcontext() as saved:
                loss = engine.forward_backward(inputs, targets, eod)
            if probe:
                tensors_measured = model_state_bytes(engine) + saved["peak"]
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
                rollbacks_here += 1
                if rollbacks_here > job.guard.max_rollbacks:
                    raise FlopwiseError(
                        f"loss keeps diverging: rolled back to {last_ckpt.name} {job.guard.max_rollbacks} times "
                        f"(guard.max_rollbacks) and it diverged again at step {step + 1} (last loss {loss:.4g}); "
                        "lower train.lr, clip gradients (train.grad_clip) or loosen the guard (guard.spike_factor)"
                    )
                position = loader.position
                engine.load(last_ckpt)
                state = ckpt.read_trainer_state(last_ckpt)
                step = state["step"]
                loader.position = position  # keep moving forward: do not replay the batches that spiked
                history[:] = [r for r in history if r["step"] <= step]  # the steps after it are run again
                if engine.is_logging_rank:
                    self.metrics.truncate_after(step)
                self._emit(event="rollback", step=step, checkpoint=str(last_ckpt), loss=loss,
                           rollbacks=guard.rollbacks)
                continue
            grad_norm = engine.clip_and_step(lr)
            if not probe:  # the probe's hooks slow its step down
                step_times.append(clock() - step_start)
            step += 1
            last_loss = loss
            window_tokens += tokens_per_step
            record = None
            if step % job.train.log_every == 0 or step == job.train.steps:
                elapsed = time.perf_counter() - window_start
                tps = window_tokens / elapsed if elapsed > 0 else 0.0
                world = engine.world_size
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
                last_ckpt, rollbacks_here = save(step), 0  # past the last rollback's checkpoint: a fresh count
            if record is not None and "tokens_per_s" in record:
                window_start, window_tokens = time.perf_counter(), 0
        if last_ckpt is None or ckpt.read_trainer_state(last_ckpt)["step"] != step:
            last_ckpt = save(step)
        plot = None
        if engine.is_logging_rank:
            plot = plot_losses(self.metrics.path, self.out / "loss.png", title=f"{job.preset} ({engine.layout.describe()})")
        if eval_loss is None and eval_batches:
            eval_loss = self._evaluate(engine, eval_batches, eod)
        versus = self._versus_plan(engine, step, step_times, memory_before, tensors_measured)
        result = TrainResult(self.out, step, last_loss, eval_loss, entropy, last_ckpt, plot, guard.skipped,
                             guard.rollbacks, history)
        self._emit(event="end", step=step, final_loss=last_loss, eval_loss=eval_loss, unigram_entropy=entropy,
                   checkpoint=str(last_ckpt), plot=str(plot) if plot else None, skipped=guard.skipped,
                   rollbacks=guard.rollbacks, versus_plan=versus)
        engine.close()
        return result

    def _intact_checkpoint(self) -> Path:
        """The newest checkpoint that verifies (naming each damaged one passed over), for this model."""
        chosen, damaged = ckpt.choose_checkpoint(self.out)
        for directory, reason in damaged:
            self._emit(event="warning", message=f"checkpoint {directory} is damaged ({reason}); "
                                                "trying the one before it")
        if chosen is None:
            detail = "; ".join(f"{d.name}: {r}" for d, r in damaged)
            raise CheckpointError(f"no intact checkpoint in {ckpt.checkpoints_dir(self.out)} ({detail})")
        ckpt.check_same_model(chosen, self.job.model_config().to_dict())
        return chosen

    def _versus_plan(self, engine, step: int, step_times: list[float], memory_before: float,
                     tensors: float | None) -> dict | None:
        """The planner's step time and memory beside the measured ones, written to metrics.jsonl: the median
        step after the first (on a CPU in the process's CPU time per thread, hardware.cpu_seconds, so that
        other work on the machine does not count; with a pipeline, the busiest rank's); on a GPU the
        allocator's peak since before the engine was built, on a CPU the tensors of the last step (model
        state + the peak of what autograd saved)."""
        if engine.plan is None or not step_times:
            return None
        timed = step_times[1:] or step_times
        measured = statistics.median(timed)
        clock = "cpu" if engine.device.type == "cpu" else "wall"
        by_rank = None
        if clock == "cpu" and engine.layout.pp > 1 and torch.distributed.is_initialized():
            # a rank's CPU clock sees its own stages' work only, and the plan's busy time is the busiest stage's:
            # compare it with the busiest rank's (an uneven split, such as an embedding-only first stage, differs)
            gathered = [torch.zeros(1, dtype=torch.float64) for _ in range(engine.world_size)]
            torch.distributed.all_gather(gathered, torch.tensor([measured], dtype=torch.float64))
            by_rank = [float(t) for t in gathered]
            measured = max(by_rank)
        if tensors is not None:
            memory, label = tensors, "model state + saved activations"
        else:
            peak, label = engine.peak_memory()
            memory, label = peak - memory_before, label + " since start"
        record = {"step": step, **forecast.comparison(engine.cost_model, engine.plan, measured, clock,
                                                      memory, label, len(timed), transients=tensors is None)}
        if by_rank is not None:
            record["measured_step_s_by_rank"] = by_rank
        if engine.is_logging_rank:
            self.metrics.write(record)
        return record

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
