"""`flopwise train`, `flopwise generate`, `flopwise info`, `flopwise export`."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from flopwise.cli.common import NON_NEGATIVE_INT, POSITIVE_INT, console, err_console, number
from flopwise.config_values import MAX_TEMPERATURE, SEED_LIMIT
from flopwise.errors import FlopwiseError
from flopwise.outputs import output_file
from flopwise.plan.memory import PRINTED_PARTS


def _warning(message: str) -> Text:
    return Text.assemble(("warning: ", "yellow"), message)  # no markup: paths may hold [brackets]


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


class TrainView:
    """Renders trainer events: a progress bar plus one line per logged step."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True,
            disable=quiet or not console.is_terminal,
        )
        self.task = None
        self.peak_label = ""

    def close(self) -> None:
        self.progress.stop()

    def __call__(self, ev: dict) -> None:
        kind = ev["event"]
        if kind == "prepare":
            console.print(f"[cyan]data[/] {ev['message']}")
        elif kind == "warning":  # warnings go to stderr, as the command's own do (above a live bar all the same)
            err_console.print(_warning(ev["message"]), highlight=False, soft_wrap=True)
        elif kind == "resume":
            console.print(f"resuming from {ev['checkpoint']} (step {ev['step']})")
        elif kind == "start":
            self.peak_label = ev["peak_label"]
            params = f"{ev['params'] / 1e6:.2f}M parameters, " if ev.get("params") else ""
            console.print(
                f"[bold]flopwise train[/]: {params}layout {ev['layout']}, device {ev['device']} "
                f"({ev['accelerator']}, {ev['peak_flops'] / 1e12:.3g} TFLOP/s {ev['peak_label']}), "
                f"{ev['train_tokens']:,} training tokens"
            )
            if ev.get("pipeline"):
                console.print(pipeline_table(ev["pipeline"], ev["split"]))
            self.progress.start()
            self.task = self.progress.add_task("train", total=ev["steps"], completed=ev["step"], status="")
        elif kind == "log":
            if self.quiet:
                return
            if "tokens_per_s" in ev:
                line = (
                    f"step {ev['step']:>6}  loss {ev['loss']:.4f}  lr {ev['lr']:.2e}  "
                    f"{ev['tokens_per_s']:,.0f} tok/s  MFU {100 * ev['mfu']:.1f}%  mem {_gib(ev['peak_memory_bytes'])}"
                )
            else:
                line = f"step {ev['step']:>6}  loss {ev['loss']:.4f}"
            if ev.get("eval_loss") is not None:
                line += f"  [green]eval {ev['eval_loss']:.4f}[/]"
            self.progress.console.print(line, highlight=False)
            if self.task is not None:
                self.progress.update(self.task, completed=ev["step"], status=f"loss {ev['loss']:.3f}")
        elif kind == "skip":
            err_console.print(_warning(f"step {ev['step']}: loss {ev['loss']:.4g} skipped (spike or non-finite)"),
                              highlight=False)
        elif kind == "rollback":
            err_console.print(_warning(f"rolled back to {ev['checkpoint']} (step {ev['step']}) after repeated loss "
                                       "spikes; data continues past the bad batches"), highlight=False, soft_wrap=True)
        elif kind == "checkpoint":
            if self.quiet:
                return
            self.progress.console.print(f"[dim]checkpoint {ev['path']}", highlight=False)
        elif kind == "end":
            self.progress.stop()
            table = Table(title="training finished", show_header=False)
            table.add_row("steps", str(ev["step"]))
            if ev.get("final_loss") is not None:
                table.add_row("final train loss", f"{ev['final_loss']:.4f} nats/token")
            if ev.get("eval_loss") is not None:
                table.add_row("held-out loss", f"{ev['eval_loss']:.4f} nats/token")
            if ev.get("unigram_entropy") is not None:
                table.add_row("unigram entropy of the corpus", f"{ev['unigram_entropy']:.4f} nats/token")
            table.add_row("skipped steps / rollbacks", f"{ev['skipped']} / {ev['rollbacks']}")
            table.add_row("checkpoint", ev["checkpoint"])
            if ev.get("plot"):
                table.add_row("loss plot", ev["plot"])
            versus = ev.get("versus_plan")
            if versus:
                clock = "CPU time per thread" if versus["step_clock"] == "cpu" else "wall clock"
                table.add_row(f"step time: planner / measured ({clock})", _versus(versus["predicted_step_s"],
                              versus["measured_step_s"], versus["step_time_error"], "s"))
                table.add_row(f"memory: planner / measured ({versus['memory_label']})",
                              _versus(versus["predicted_memory_bytes"] / 2**30, versus["measured_memory_bytes"] / 2**30,
                                      versus["memory_error"], "GiB"))
            console.print(table)


def _versus(predicted: float, measured: float, error: float | None, unit: str) -> str:
    gap = f" ({100 * error:+.0f}%)" if error is not None else ""
    return f"{predicted:.3g} / {measured:.3g} {unit}{gap}"


PIPELINE_COLUMNS = {  # printed column -> the planner's memory parts it adds up (flopwise.plan.memory)
    "states": ("params", "grads", "optimizer"),
    **{col: PRINTED_PARTS[col] for col in ("activations", "logits", "other", "total")},
}


def pipeline_table(rows: list[dict], split: list[int]) -> Table:
    """The planner's memory per pipeline rank for this run (flopwise.plan: the numbers `flopwise plan` gives)."""
    table = Table(title=f"pipeline split {','.join(map(str, split))}: the planner's memory per rank, GB")
    for col in ("rank", "layers", "in flight", *PIPELINE_COLUMNS):
        table.add_column(col, justify="right")
    for st in rows:
        table.add_row(str(st["stage"]), str(st["layers"]), f"{st['in_flight']:g}",
                      *(f"{sum(st[k] for k in parts) / 1e9:.3g}" for parts in PIPELINE_COLUMNS.values()))
    return table


def train(
    preset: str = typer.Option(None, "--preset", "-p", help="Model preset (default: tiny). See `flopwise info`."),
    config: Path = typer.Option(
        None, "--config", "-c", help="TOML file with model, train, data, checkpoint, guard and parallel sections."
    ),
    set_: list[str] = typer.Option(None, "--set", help="Override a config key, e.g. --set train.lr=3e-4 (repeatable)."),
    steps: int = typer.Option(None, "--steps", help="Optimizer steps to train (train.steps)."),
    seed: int = typer.Option(None, "--seed", help="Seed for initialisation and data order (train.seed)."),
    out: str = typer.Option(None, "--out", "-o", help="Run directory: checkpoints, metrics.jsonl, loss.png."),
    metrics: Path = typer.Option(None, "--metrics", help="JSON-lines metrics file (default: OUT/metrics.jsonl)."),
    log_every: int = typer.Option(None, "--log-every", help="Log a line every N steps (train.log_every)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in --out, if any."),
    nproc: int = typer.Option(None, "--nproc", help="Processes to launch on this machine with torchrun.",
                              callback=POSITIVE_INT),
    dp: int = typer.Option(None, "--dp", help="Data-parallel degree: every replica and shard (parallel.dp)."),
    dp_shard: int = typer.Option(None, "--dp-shard", help="Ranks per ZeRO shard group, below --dp for hybrid sharding."),
    tp: int = typer.Option(None, "--tp", help="Tensor-parallel degree (with sequence parallelism)."),
    pp: int = typer.Option(None, "--pp", help="Pipeline-parallel degree."),
    zero: int = typer.Option(None, "--zero", help="ZeRO stage 0-3 over the data-parallel ranks (needs --dp > 1)."),
    ep: int = typer.Option(None, "--ep", help="Expert parallelism (MoE): experts split over EP data-parallel ranks."),
    split: str = typer.Option(None, "--split", "--pp-layers",
                              help="Layers per pipeline stage, e.g. 2,2,3,3 (the first and the last may be 0: only "
                                   "the embedding, only the head), or auto."),
    schedule: str = typer.Option(None, "--schedule", "--pp-schedule", help="Pipeline schedule: gpipe, 1f1b or interleaved."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or per-step lines."),
    verify_data: bool = typer.Option(None, "--verify-data", help="Check every shard's sha256 against the manifest "
                                     "before training (data.verify; sizes are always checked)."),
) -> None:
    """Train a model. With no arguments: the `tiny` preset on the embedded Python-stdlib corpus, on CPU."""
    from flopwise.train.config import load_config

    direct = {
        "preset": preset, "out": out, "train.steps": steps, "train.seed": seed, "train.log_every": log_every,
        "parallel.dp": dp, "parallel.dp_shard": dp_shard, "parallel.tp": tp, "parallel.pp": pp,
        "parallel.zero": zero, "parallel.ep": ep, "parallel.split": split, "parallel.schedule": schedule,
        "data.verify": verify_data,
    }
    job = load_config(config, set_ or [], **direct)
    world = job.parallel.world_size
    if nproc is not None and nproc != world and world > 1:
        raise typer.BadParameter(f"--nproc {nproc} but the layout needs {world} processes (dp x tp x pp)")
    in_rank = "RANK" in os.environ
    launcher = ((nproc or 1) > 1 or world > 1) and not in_rank
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if in_rank:
        from flopwise.train.launch import rank_started

        rank_started()
    elif metrics is not None:
        output_file(metrics, "--metrics")  # output locations first, before any expensive work
    from flopwise.train.preempt import PREEMPTED_EXIT, Preempted
    from flopwise.train.run_lock import run_lock
    from flopwise.train.signals import Stopped, stop_on_signals

    view = TrainView(quiet)
    made_out = not in_rank and not Path(job.out).exists()  # a refused run leaves no empty folder behind
    try:  # a rank keeps the default SIGTERM (it ends at once): the launcher reports the stop
        with stop_on_signals() if not in_rank else contextlib.nullcontext(), \
                run_lock(job.out) if rank0 else contextlib.nullcontext() as took_over:
            if took_over:
                err_console.print(_warning(f"{job.out}: {took_over}"), highlight=False)
            if launcher:
                from flopwise.train.launch import launch_torchrun
                from flopwise.train.run_lock import LOCK_FILE

                lock = (Path(job.out) / LOCK_FILE).resolve()
                raise typer.Exit(launch_torchrun(job, nproc or world, sys.argv[1:], lock))
            from flopwise.train.trainer import train as run_training

            run_training(job, resume=resume, metrics_path=metrics, on_event=view if rank0 else None)
    except Preempted as exc:  # SIGTERM while training: a checkpoint was saved; the status tells a scheduler
        view.close()
        err_console.print(_warning(str(exc)), highlight=False, soft_wrap=True)
        raise typer.Exit(PREEMPTED_EXIT) from None
    except FlopwiseError as exc:
        from flopwise.train.launch import report_rank_error

        if in_rank and report_rank_error(str(exc)):  # a rank of `train --nproc`: the launcher prints it once
            raise typer.Exit(2) from None
        if made_out:
            with contextlib.suppress(OSError):  # only if nothing was written there (the lock is gone by now)
                Path(job.out).rmdir()
        raise
    except Exception:
        from flopwise.train.launch import another_rank_failed

        if in_rank and another_rank_failed():  # e.g. a collective broken by the rank that failed first
            raise typer.Exit(1) from None
        raise
    except Stopped as exc:
        view.close()
        err_console.print(stopped_message(exc, job.out, launcher), highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_status) from None


def stopped_message(exc, out: str, launcher: bool) -> str:
    from flopwise.train.checkpoint import latest_checkpoint, read_trainer_state

    what = "torchrun and every rank ended" if launcher else "training ended"
    last = latest_checkpoint(out)
    if last is None:
        return f"stopped by {exc.name}: {what}; no checkpoint was written yet"
    try:
        step = f" (step {read_trainer_state(last)['step']})"
    except (KeyError, TypeError, FlopwiseError):
        step = ""
    return f"stopped by {exc.name}: {what}; the last checkpoint is {last}{step}: add --resume to continue from it"


def generate(
    prompt: str = typer.Argument(..., help="Text to continue."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A run directory (latest checkpoint) or a step directory."),
    max_tokens: int = typer.Option(100, "--max-tokens", "-n", help="Most tokens to sample.", callback=POSITIVE_INT),
    temperature: float = typer.Option(0.8, "--temperature", "-t", help=f"Sampling temperature, 0 to "
                                      f"{MAX_TEMPERATURE:g}; 0 is greedy.",
                                      callback=number(low=0, high=MAX_TEMPERATURE)),
    top_k: int = typer.Option(50, "--top-k", help="Sample among the k most likely tokens; 0 for all.",
                              callback=NON_NEGATIVE_INT),
    seed: int = typer.Option(None, "--seed", help="Seed for reproducible samples (0 to 2**63 - 1).",
                             callback=number(low=0, high=SEED_LIMIT - 1, integer=True)),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Sample a continuation of PROMPT from a trained checkpoint."""
    from flopwise.serve.generate import Generator

    gen = Generator.from_checkpoint(checkpoint, device)

    def capped(tokens: int) -> None:
        err_console.print(f"note: --max-tokens {max_tokens} is past the model's context: at most {tokens} tokens "
                          "follow this prompt", highlight=False)

    pieces = gen.stream(prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed,
                        on_capped=capped)
    first = next(pieces, "")  # the prompt is checked (length, sampling parameters) before any of it is printed
    console.print(prompt, end="", style="bold", highlight=False, markup=False)
    for piece in itertools.chain([first], pieces):
        console.print(piece, end="", highlight=False, markup=False, soft_wrap=True)
    console.print()


def info(
    preset: str = typer.Option("tiny", "--preset", "-p", help="Model preset name."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Parameters and training FLOPs per token of a model preset (counted on the meta device)."""
    from flopwise.models.info import model_info

    data = model_info(preset)
    if as_json:
        print(json.dumps(data))
        return
    table = Table(title=preset, show_header=False)
    for key, value in data.items():
        table.add_row(key, _fmt(value))
    console.print(table)


def export(
    checkpoint: Path = typer.Argument(..., help="A run directory or a step directory."),
    dest: Path = typer.Argument(..., help="Output .safetensors file, or a folder with --format hf."),
    format_: str = typer.Option("safetensors", "--format", help="safetensors (one file) or hf (a Hugging Face folder)."),
) -> None:
    """Export a checkpoint (saved under any layout): one safetensors file for the single-device model, or a
    Hugging Face folder (Llama twins load as LlamaForCausalLM; LFA models with trust_remote_code=True)."""
    if format_ == "hf":
        from flopwise.serve.export import export_hf

        err_console.print(f"wrote {export_hf(checkpoint, dest)}")
        return
    if format_ != "safetensors":
        raise typer.BadParameter(f"--format {format_!r}: choose safetensors or hf")
    from flopwise.train.checkpoint import export_safetensors

    path = export_safetensors(checkpoint, dest)
    err_console.print(f"wrote {path}")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(generate)
    app.command()(info)
    app.command()(export)
