"""`flopwise plan`: search layouts (or cost one), the compute budget, validation against published runs and
calibration against the user's own.

flopwise plan --preset yuan2-102b --gpu A100-80GB --gpus 1024 --global-batch 1152
flopwise plan --preset yuan2-102b --gpus 1024 --global-batch 1152 --layout tp=8,pp=16 --write-config job.toml
flopwise plan budget --preset yuan2-102b --gpus 1024 --mfu 0.45
flopwise plan validate ../shared/published/megatron_sc21_table1.csv --json
flopwise plan calibrate runs/a runs/b --holdout runs/c --out my-gpu.toml
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from flopwise.cli.common import NON_NEGATIVE, POSITIVE, POSITIVE_INT, console, err_console, number
from flopwise.errors import ConfigError, PlanError
from flopwise.hardware import GB, resolve_accelerator, training_precision, write_accelerator
from flopwise.layout import parse_layout
from flopwise.models.config import ModelConfig, get_preset, preset_names
from flopwise.outputs import output_file
from flopwise.plan.budget import budget as compute_budget
from flopwise.plan.calibrate import DEVICE_CONSTANTS, calibrate_runs
from flopwise.plan.cost import Plan, fa3_over_fa2
from flopwise.plan.memory import PRINTED_PARTS
from flopwise.plan.search import search
from flopwise.plan.spec import SOFTWARE, Cluster, Training, attention_class, attention_kernel
from flopwise.plan.validate import validate_files
from flopwise.train.config import TRAINER_PRECISIONS, job_for_layout, write_job_config

app = typer.Typer(
    help=(
        "Predict step time, memory and cost; choose the most compute-efficient layout.\n\n"
        "Without a subcommand: search layouts for a model on a cluster (or cost one with --layout).\n"
        "Example: flopwise plan --preset yuan2-102b --gpu A100-80GB --gpus 1024 --global-batch 1152"
    ),
    invoke_without_command=True,
    no_args_is_help=False,
)


def _model(preset, layers, hidden, heads, kv_heads, ffn, mlp, vocab, seq, lfa) -> ModelConfig:
    shape = {
        "layers": layers,
        "hidden": hidden,
        "heads": heads,
        "kv_heads": kv_heads,
        "ffn": ffn,
        "mlp": mlp,
        "vocab_size": vocab,
        "seq_len": seq,
        "lfa": lfa,
    }
    given = {k: v for k, v in shape.items() if v is not None}
    if preset:
        return get_preset(preset).replace(**given)
    missing = [k for k in ("layers", "hidden", "heads", "ffn", "vocab_size", "seq_len") if k not in given]
    if missing:
        raise ConfigError(
            f"give --preset ({', '.join(preset_names())}) or a full shape; missing: "
            + ", ".join("--" + m.replace("_size", "").replace("seq_len", "seq") for m in missing)
        )
    given.setdefault("kv_heads", given["heads"])
    given.setdefault("lfa", False)
    given.setdefault("mlp", "swiglu")
    return ModelConfig(**given)


def _amount(x: float, decimals: int = 1) -> str:
    """A count of days or hours for a table: 1,234.5 up to a billion, 1.23e+12 beyond (a huge --tokens must not
    print a wall of digits)."""
    return f"{x:,.{decimals}f}" if abs(x) < 1e9 else f"{x:.3g}"


def _gb(x: float) -> str:
    return f"{x / 1e9:.1f}"


def _plans_table(plans: list[Plan], title: str) -> Table:
    table = Table(title=title, header_style="bold")
    for col in ("#", "layout", "pp split", "step s", "tok/s/GPU", "MFU", "peak GB", "days"):
        if col in ("layout", "pp split"):
            table.add_column(col, overflow="fold", min_width=14 if col == "pp split" else 24)
        else:
            table.add_column(col, justify="right", no_wrap=True)
    for i, p in enumerate(plans, 1):
        split = "uniform" if len(set(p.pp_layers)) == 1 else " ".join(map(str, p.pp_layers))
        table.add_row(
            str(i),
            p.layout.short(),
            split,
            f"{p.step_time:.3g}",
            f"{p.tokens_per_s_per_gpu:,.0f}",
            f"{100 * p.mfu:.1f}%",
            _gb(p.peak_memory) + ("" if p.fits else " !"),
            _amount(p.days) if p.days else "-",
        )
    return table


def _breakdown(plan: Plan) -> None:
    table = Table(title=f"#1: {plan.step_time:.3g} s/step", header_style="bold")
    table.add_column("part")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    for key, sec in plan.breakdown.items():
        table.add_row(key, f"{sec:.3g}", f"{plan.breakdown_percent[key]:.1f}%")
    console.print(table)
    mem = Table(title=f"memory per rank, GB (usable {_gb(plan.memory_limit)})", header_style="bold")
    for col in ("stage", "layers", *PRINTED_PARTS):
        mem.add_column(col, justify="right")
    stages = list(range(len(plan.memory)))
    if len(stages) > 8:
        peak = max(stages, key=lambda i: plan.memory[i]["total"])
        stages = sorted({0, 1, peak, stages[-2], stages[-1]})
    for i in stages:
        m = plan.memory[i]
        mem.add_row(
            str(i),
            str(plan.pp_layers[i]),
            *(_gb(sum(m[k] for k in parts)) for parts in PRINTED_PARTS.values()),
        )
    console.print(mem)
    if plan.gpu_hours:
        console.print(f"training the requested tokens: {_amount(plan.days)} days, {_amount(plan.gpu_hours, 0)} "
                      "GPU-hours")


@app.callback()
def plan(
    ctx: typer.Context,
    preset: str = typer.Option(None, help=f"model preset: {', '.join(preset_names())}"),
    layers: int = typer.Option(None, help="transformer blocks (overrides the preset's)", callback=POSITIVE_INT),
    hidden: int = typer.Option(None, help="hidden size (overrides the preset's)", callback=POSITIVE_INT),
    heads: int = typer.Option(None, help="attention heads (overrides the preset's)", callback=POSITIVE_INT),
    kv_heads: int = typer.Option(
        None, help="key/value heads, GQA (default: the preset's, or --heads)", callback=POSITIVE_INT
    ),
    ffn: int = typer.Option(None, help="feed-forward width (overrides the preset's)", callback=POSITIVE_INT),
    mlp: str = typer.Option(None, help="feed-forward kind: swiglu | gelu"),
    vocab: int = typer.Option(None, help="vocabulary size (overrides the preset's)", callback=POSITIVE_INT),
    seq: int = typer.Option(None, help="sequence length in tokens (overrides the preset's)", callback=POSITIVE_INT),
    lfa: bool = typer.Option(None, "--lfa/--no-lfa", help="Localized Filtering-based Attention"),
    gpu: str = typer.Option("A100-80GB", help="catalogue accelerator, cpu (this machine, timed at start-up), or a TOML "
                                              "file defining one (its keys: README, 'Planning a run')"),
    gpus: int = typer.Option(8, help="number of GPUs", callback=POSITIVE_INT),
    gpus_per_node: int = typer.Option(8, help="GPUs per node (a node's GPUs share the intra-node links)",
                                      callback=POSITIVE_INT),
    intra_gbps: float = typer.Option(None, help="intra-node GB/s per GPU, one direction (default: the GPU's NVLink or "
                                                "Infinity Fabric; on AMD's mesh, all of a GPU's links together)",
                                     callback=POSITIVE),
    inter_gbps: float = typer.Option(
        None, help="inter-node GB/s per GPU, one direction (default: the GPU's reference node: 25 A100, 50 H100/H200)",
        callback=POSITIVE,
    ),
    global_batch: int = typer.Option(None, help="sequences per optimizer step", callback=POSITIVE_INT),
    tokens: float = typer.Option(0.0, help="tokens to train (for days and GPU-hours)", callback=NON_NEGATIVE),
    precision: str = typer.Option(
        None, help="bf16 | fp16 | fp32 (TF32 off, PyTorch's default: the CUDA cores' FP32 rate) | tf32 (fp32 with "
                   "TF32 matmuls, Ampere and newer) | fp8 (FP8 linear layers, per-tensor scales, Hopper and newer) | "
                   "fp8-rowwise (row-wise scales, torchao's rowwise recipe: more cast traffic) | fp8-rowwise-gw-hp "
                   "(torchao's rowwise_with_gw_hp: the weight-gradient GEMMs in bf16, one cast copy) | mxfp8 (block-scaled "
                   "FP8, Blackwell, CDNA 4: B200, GB200, B300, GB300, MI350X, MI355X) | nvfp4 (NVIDIA's 4-bit "
                   "block-scaled format, Blackwell) | mxfp4 (the OCP 4-bit microscaling format, Blackwell, CDNA 4); "
                   "flopwise's trainer runs bf16, fp32 and tf32 (default: bf16 on a GPU, fp16 on V100, P100 and T4, "
                   "which lack bf16, fp32 on a measured CPU, as the trainer runs)"
    ),
    software: str = typer.Option("flopwise", help=f"trainer profile: {', '.join(SOFTWARE)}"),
    attention: str = typer.Option(
        None, help="the run's attention kernel (default: the profile's): flash (FlashAttention, SDPA, cuDNN: the "
                   "profile's kernel class) | fa2 (FlashAttention-2, SDPA's flash backend) | fa3 (FlashAttention-3, "
                   "cuDNN's fused attention: SDPA's cuDNN backend, Transformer Engine; Hopper and newer, costed at up to "
                   f"{fa3_over_fa2():.1f}x FA2's rate there, never above the GPU's GEMMs) | unfused (scores and "
                   "softmax as tensors: Hugging Face eager attention, Megatron-LM without --use-flash-attn); the "
                   "profiles' own: "
                   + ", ".join(f"{name} {sw.kernel}" for name, sw in SOFTWARE.items())
                   + "; on parts without FlashAttention-2 (V100, P100, T4) te and megatron-lm fall back to unfused, "
                     "which --attention flash overrides (a memory-efficient fused kernel)"),
    expert_imbalance: float = typer.Option(1.0, help="MoE: busiest expert-parallel rank's tokens over the mean (>= 1)"),
    host_ms: float = typer.Option(
        None, help="the stack's host time per step in ms, where you measured it (about 0 under full-iteration CUDA "
                   "graphs); default: the profile's, " + ", ".join(
                       f"{name} {1e3 * sw.step_overhead_s:g}" for name, sw in SOFTWARE.items() if sw.step_overhead_s)
                   + ", the others 0", callback=NON_NEGATIVE),
    block_host_ms: float = typer.Option(
        None, help="the host's time per transformer block and micro-batch in ms, forward + backward, where you "
                   "measured it (`flopwise plan host-probe` on your server); a block whose GPU work is shorter "
                   "waits for it; 0 turns it off. Default: torch-eager, this project's figures for the layout's "
                   "wrappers (0.5-8.5 ms); the other profiles, not costed (a plan with blocks under ~1 ms says so)",
        callback=NON_NEGATIVE),
    compile_blocks: bool = typer.Option(
        False, "--compile", help="flopwise's trainer with train.compile = true: each block through torch.compile, "
                                 "its elementwise chains fused (on an H200 a 1-8B step took 7-22% less time than "
                                 "eager) and its backward keeping fewer activations (each norm's input, not its "
                                 "normalised x; not SiLU's output)"),
    fp8_all_gather: bool = typer.Option(
        False, "--fp8-all-gather", help="precision fp8 (or mxfp8 on Megatron / NeMo's `te` profiles): the sharded "
                                        "weights are gathered in that precision (torchtitan's "
                                        "enable_fsdp_float8_all_gather, Megatron's --fp8-param-gather): about half the "
                                        "gather's bytes, and torchao casts each shard before every gather, not each "
                                        "weight on every micro-batch; dense models, layouts with ZeRO / FSDP "
                                        "(zero >= 1, dp x cp > 1)"),
    cuda_graphs: bool = typer.Option(
        False, "--cuda-graphs", help="the whole step runs as one CUDA graph (Megatron's full_iteration graphs): an MoE "
                                     "block's host time (router, permutation, the dispatcher's host sync; "
                                     "experts.MOE_BLOCK_HOST_S) is not added"),
    a2a_overlap: bool = typer.Option(
        False, "--a2a-overlap", help="the expert all-to-all overlaps computation (Megatron's moe_a2a_overlap / "
                                     "overlap_moe_expert_parallel_comm): each MoE block's hides behind its own "
                                     "forward and backward, the rest exposed"),
    dispatcher: str = typer.Option(
        "alltoall", "--dispatcher", help="the MoE token dispatcher: alltoall (Megatron's, one copy of a token per expert "
                                         "it visits), deepep or hybridep (one copy per destination node, fanned out "
                                         "over NVLink there); it matters where an expert-parallel group spans nodes"),
    layout: str = typer.Option(None, help="fix some layout fields, e.g. tp=8,pp=16 (the rest is searched)"),
    top: int = typer.Option(5, help="plans to show", callback=POSITIVE_INT),
    split: str = typer.Option("balanced", help="pipeline split: balanced | uniform"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
    write_config: Path = typer.Option(
        None, "--write-config", help="write the best plan as a job config that `flopwise train --config` runs"
    ),
) -> None:
    """Search the layouts of a model on a cluster; print the best plans and the first's breakdown."""
    if ctx.invoked_subcommand is not None:
        return
    shape = (layers, hidden, heads, kv_heads, ffn, mlp, vocab, seq, lfa)
    if preset is None and global_batch is None and all(v is None for v in shape):  # a bare `flopwise plan`
        console.print(ctx.get_help())
        raise typer.Exit(0)
    if global_batch is None:
        raise ConfigError("--global-batch is required (sequences per optimizer step)")
    if split not in ("balanced", "uniform"):
        raise ConfigError(f"--split {split!r}: must be balanced or uniform")
    model = _model(preset, layers, hidden, heads, kv_heads, ffn, mlp, vocab, seq, lfa)
    accelerator = resolve_accelerator(gpu)
    if precision is None:  # the trainer's train.dtype = "auto"; fp16 where a GPU lacks bf16
        precision = training_precision(accelerator)
    cluster = Cluster(
        accelerator,
        gpus,
        gpus_per_node,
        intra_gbps * GB if intra_gbps else None,
        inter_gbps * GB if inter_gbps else None,
    )
    training = Training(global_batch, tokens=tokens, precision=precision, software=software,
                        expert_imbalance=expert_imbalance, attention=attention.lower() if attention else None,
                        compiled=compile_blocks, step_overhead_s=host_ms / 1e3 if host_ms is not None else None,
                        block_host_s=block_host_ms / 1e3 if block_host_ms is not None else None,
                        fp8_all_gather=fp8_all_gather, cuda_graphs=cuda_graphs,
                        a2a_overlap=a2a_overlap, dispatcher=dispatcher.lower())
    if write_config is not None and (software != "flopwise" or precision not in TRAINER_PRECISIONS):
        raise ConfigError(f"--write-config writes a job for flopwise's trainer: it needs --software flopwise and "
                          f"{' or '.join(TRAINER_PRECISIONS)} (got --software {software}, --precision {precision})")
    fixed = parse_layout(layout) if layout else {}
    result = search(model, cluster, training, fixed, top=top, split=split)
    if write_config is not None:
        output_file(write_config, "--write-config")  # after the search (seconds): a plan that fails makes no folder
        best = result.plans[0]
        job = job_for_layout(best.layout, model, global_batch=global_batch, precision=precision, preset=preset,
                             tokens=tokens)
        job.train.compile = compile_blocks
        write_job_config(job, write_config)
        err_console.print(f"wrote {write_config}: {best.layout.short()}; run it with "
                          f"`flopwise train --config {write_config}`", highlight=False)
    if as_json:
        print(
            json.dumps(
                {
                    "model": model.to_dict(),
                    "cluster": {
                        "gpu": cluster.accelerator.name,
                        "gpus": cluster.gpus,
                        "gpus_per_node": gpus_per_node,
                        "intra_node_GBps": cluster.intra_bw / GB,
                        "intra_node_pair_GBps": cluster.intra_link(2, 2) / GB,  # a pair's link (a mesh, bridges)
                        "inter_node_GBps_per_gpu": cluster.inter_bw / GB,
                    },
                    "training": {
                        "global_batch": global_batch,
                        "tokens": tokens,
                        "precision": precision,
                        "software": software,
                        "compiled": compile_blocks,
                        "attention": attention_kernel(training, accelerator),
                        "attention_class": attention_class(training, accelerator),
                        "host_s": training.profile.step_overhead_s,
                        "block_host_s": training.profile.block_host_s,
                        "fp8_all_gather": fp8_all_gather,
                        "cuda_graphs": cuda_graphs,
                        "a2a_overlap": a2a_overlap,
                        "dispatcher": training.dispatcher,
                    },
                    "evaluated": result.evaluated,
                    "feasible": result.feasible,
                    "plans": [p.to_dict() for p in result.plans],
                    "notes": result.notes,
                },
                indent=2,
            )
        )
        return
    name = preset or "custom model"
    title = (
        f"{name} on {cluster.gpus} x {cluster.accelerator.name}, global batch {global_batch}: "
        f"{result.feasible} of {result.evaluated} layouts fit"
    )
    console.print(_plans_table(result.plans, title))
    _breakdown(result.plans[0])
    for note in [*result.notes, *result.plans[0].notes]:
        err_console.print(f"note: {note}", highlight=False)


@app.command("budget")
def budget_cmd(
    preset: str = typer.Option(None, help="model preset (its parameter count and FLOPs per token)"),
    params: float = typer.Option(None, help="parameter count, e.g. 7e9", callback=POSITIVE),
    tokens: float = typer.Option(
        None, help="tokens to train (default: 20 x parameters, Chinchilla)", callback=POSITIVE
    ),
    flops: float = typer.Option(
        None, help="a FLOP budget: gives the compute-optimal model size and tokens", callback=POSITIVE
    ),
    gpu: str = typer.Option("A100-80GB", help="catalogue accelerator or a TOML file"),
    gpus: int = typer.Option(1024, help="number of GPUs the time is computed for", callback=POSITIVE_INT),
    mfu: float = typer.Option(0.45, help="model FLOPs utilisation to assume, in (0, 1]",
                              callback=number(low=0, low_open=True, high=1)),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Training FLOPs (6 N D), PF-days, Chinchilla-optimal tokens / model size, and time on N GPUs."""
    model = get_preset(preset) if preset else None
    b = compute_budget(
        resolve_accelerator(gpu), gpus, mfu, params=params, tokens=tokens, flops=flops, model=model
    )
    if as_json:
        print(json.dumps(b.to_dict(), indent=2))
        return
    table = Table(title="compute budget", header_style="bold", show_header=False)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [
        ("parameters", f"{b.params:.4g}"),
        ("tokens", f"{b.tokens:.4g}"),
        ("training FLOPs", f"{b.flops:.4g}"),
        ("PF-days", _amount(b.pf_days)),
        ("compute-optimal tokens for this size (20 N)", f"{b.optimal_tokens:.4g}"),
        (
            "compute-optimal size for these FLOPs",
            f"{b.optimal_params_for_flops:.4g} params, {b.optimal_tokens_for_flops:.4g} tokens",
        ),
        (
            f"time on {b.gpus} x {b.accelerator} at {100 * b.mfu:.0f}% MFU",
            f"{_amount(b.days)} days ({_amount(b.gpu_hours, 0)} GPU-hours)",
        ),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command("validate")
def validate_cmd(
    files: list[Path] = typer.Argument(
        ..., help="published-runs CSV file(s) (the format: ../shared/published/README.md beside the repository)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    software: str = typer.Option(
        None, help=f"trainer profile for every row without its own software cell: {', '.join(SOFTWARE)} (default: per "
        "row, from its stack column, else the stack its source text names, else its layout)"),
) -> None:
    """Predict the step time of every row of published-runs CSVs; print errors, median and maximum.

    Each row is costed with the profile of the stack that ran it, and with the attention kernel it states (an
    `attention` column, flash | unfused, else what its notes say), else the profile's (on V100, P100 and T4 its
    fallback, unfused for Megatron-family stacks), else flash where unfused attention could not have run: scores too
    large for the GPUs, or a layout that needs a fused kernel; the table shows which (and why, when inferred). Rows
    that give the peak memory per GPU their run printed (optional columns `measured_memory_gib`
    and `memory_measure`: reserved | allocated | device | blank) also get the planned peak beside it: the whole of it
    for a device figure (nvidia-smi), less the CUDA context and workspaces for torch's counters or a blank measure."""
    if software is not None and software not in SOFTWARE:
        raise ConfigError(f"--software {software!r}: must be one of {', '.join(SOFTWARE)}")
    report = validate_files(files, software)
    if as_json:
        print(json.dumps(report, indent=2))
        _fail_if_nothing_predicted(report)
        return
    # a memory column only where a row printed a peak (or gave a bad one)
    memory = any("measured_memory_gib" in r or "memory_message" in r for r in report["rows"])
    table = Table(title="predicted vs measured step time (error = predicted / measured - 1)", header_style="bold")
    columns = ("source", "model", "layout / reason", "predicted s", "measured s", "error", "where the time goes",
               *(("memory GiB: planned / printed (error)",) if memory else ()))
    for col in columns:
        if col in ("source", "model", "layout / reason", "where the time goes"):
            table.add_column(col, overflow="fold")
        else:
            table.add_column(col, justify="right", overflow="fold" if col.startswith("memory") else "ellipsis",
                             no_wrap=not col.startswith("memory"))
    for r in report["rows"]:
        if "error" not in r:
            measured = "-" if r["measured_s"] is None else f"{r['measured_s']:.3g}"
            table.add_row(r["source"], r["model"], r.get("error_message", ""), "-", measured, "-", "",
                          *((_memory_cell(r),) if memory else ()))
            continue
        parts = sorted(r["breakdown_percent"].items(), key=lambda kv: -kv[1])
        where = " ".join(f"{k} {v:.0f}%" for k, v in parts if v >= 0.5)
        how = "; ".join([f"{r['layout']} [{r['software']}]", *r["notes"]])
        table.add_row(r["source"], r["model"], how, f"{r['predicted_s']:.3f}", f"{r['measured_s']:.3f}",
                      f"{100 * r['error']:+.1f}%", where, *((_memory_cell(r),) if memory else ()))
    console.print(table)
    summaries = {**report["files"], **{f"source {k}": v for k, v in report["sources"].items()}}
    for name, s in {**summaries, "all": report["summary"]}.items():
        if s["median_abs_error"] is None:
            console.print(f"{name}: no row could be predicted")
            continue
        line = (f"{name}: {s['predicted']} row{'' if s['predicted'] == 1 else 's'}, median |error| "
                f"{100 * s['median_abs_error']:.1f}%, max |error| {100 * s['max_abs_error']:.1f}%")
        if s["memory_rows"]:
            line += (f"; peak memory on {s['memory_rows']} row{'' if s['memory_rows'] == 1 else 's'} that printed "
                     f"it: median |error| {100 * s['memory_median_abs_error']:.1f}%, max "
                     f"{100 * s['memory_max_abs_error']:.1f}%")
        console.print(line)
    _fail_if_nothing_predicted(report)


def _memory_cell(r: dict) -> str:
    """'61.2 / 67.0 reserved (-9%)' for a row that printed its peak memory, '- / 67.0' where its step could not be
    planned, the reason for a bad memory cell, '' for a row that printed none."""
    if "memory_message" in r:
        return r["memory_message"]
    if "measured_memory_gib" not in r:
        return ""
    measure = f" {r['memory_measure']}" if r["memory_measure"] else ""
    if "memory_error" not in r:
        return f"- / {r['measured_memory_gib']:.1f}{measure}"
    return (f"{r['planned_memory_gib']:.1f} / {r['measured_memory_gib']:.1f}{measure} "
            f"({100 * r['memory_error']:+.0f}%)")


def _fail_if_nothing_predicted(report: dict) -> None:
    """A validation that predicted no row is a failure (exit status 2), not an empty success."""
    if report["summary"]["predicted"] == 0:
        first = next((r["error_message"] for r in report["rows"] if "error_message" in r), "")
        raise PlanError(f"no row could be predicted ({report['summary']['rows']} rows); first problem: {first}")


@app.command("calibrate")
def calibrate_cmd(
    runs: list[Path] = typer.Argument(..., help="run directories of finished `flopwise train` runs to fit on"),
    holdout: list[Path] = typer.Option(None, "--holdout", help="runs to report the error on, not fitted (repeatable)"),
    fit: str = typer.Option(
        None, "--fit", help="constants to fit, comma-separated: " + ", ".join(DEVICE_CONSTANTS)
        + " (default: what the runs can tell apart)"
    ),
    out: Path = typer.Option(None, "--out", help="write the calibrated accelerator here (TOML for --gpu)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Fit the device constants to your measured runs; write an accelerator TOML that `flopwise plan --gpu` uses.

    Runs on a measured CPU are set on one measurement first (the median of theirs), so planning with the file
    gives the 'after' column."""
    names = [n.strip() for n in fit.split(",") if n.strip()] if fit else None
    if names is not None and len(set(names)) != len(names):
        raise ConfigError(f"--fit {fit}: a constant named twice")
    report = calibrate_runs(runs, holdout or [], names)
    if out is not None:
        output_file(out, "--out")  # after the fit (seconds): a fit that fails makes no folder
        write_accelerator(report.accelerator, out)
    if as_json:
        print(json.dumps({"constants": report.constants, "runs": report.rows, "warnings": report.warnings,
                          "out": str(out) if out else None}, indent=2))
        return
    table = Table(title="planner vs measured step time, before and after calibration", header_style="bold")
    for col in ("run", "role", "layout", "measured s", "before s", "error before", "after s", "error after"):
        table.add_column(col, overflow="fold", justify="left" if col in ("run", "role", "layout") else "right")
    for r in report.rows:
        table.add_row(r["run"], r["role"], r["layout"], f"{r['measured_s']:.3g}", f"{r['predicted_before_s']:.3g}",
                      f"{100 * r['error_before']:+.1f}%", f"{r['predicted_after_s']:.3g}",
                      f"{100 * r['error_after']:+.1f}%")
    console.print(table)
    for role in ("fit", "holdout"):
        before, after = report.median_error(role, "error_before"), report.median_error(role, "error_after")
        if before is not None:
            console.print(f"median |error|, {'runs fitted on' if role == 'fit' else 'held-out runs'}: "
                          f"{100 * before:.1f}% before, {100 * after:.1f}% after")
    fitted = ", ".join(f"{k} = {v / 1e9:.3g} GB/s" if k == "link_bandwidth" else f"{k} = {v:.3g}"
                       for k, v in report.constants.items())
    console.print(f"fitted: {fitted}")
    for warning in report.warnings:
        err_console.print(f"warning: {warning}", highlight=False)
    if out is not None:
        console.print(f"wrote {out}; plan with it: flopwise plan --gpu {out} ...")


@app.command("host-probe")
def host_probe_cmd(
    wrappers: str = typer.Option(
        None, "--wrappers", help="comma-separated stacks of wrappers to time, each 'eager' or parts of tp, ac (full "
                                 "recomputation), fsdp, autocast joined by '+', e.g. tp+ac+fsdp+autocast (default: "
                                 "plain eager, each alone, then torchtitan's combinations)"),
    world: int = typer.Option(8, help="the TP and FSDP degree (the fake process group has its square of ranks)",
                              callback=POSITIVE_INT),
    repeats: int = typer.Option(40, help="timed steps per stack (the median is reported)", callback=POSITIVE_INT),
    device: str = typer.Option("cpu", help="cpu | cuda: on a GPU server, cuda counts the kernel launches too"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Time the host's work per transformer block under PyTorch-native wrappers, for `flopwise plan --block-host-ms`.

    A Llama-style block too narrow for its kernels to matter runs forward and backward under DTensor TP, FSDP2, full
    recomputation and bf16 autocast as torchtitan-style stacks apply them, the collectives on PyTorch's fake process
    group; what is timed is the host's share (dispatcher, autograd, the wrappers, launches). Run it on the training
    server's host, in a process of its own: a block whose GPU work is shorter than the figure of its stack waits for
    the host. The torch-eager profile carries this project's figures (measured on a CPU); yours replace them. Other
    stacks' own layers (Megatron, Transformer Engine, DeepSpeed) dispatch differently: this measures the PyTorch-native
    ones."""
    from flopwise.plan import host_probe  # imports torch.distributed: only here

    chosen = tuple(w.strip() for w in wrappers.split(",") if w.strip()) if wrappers else host_probe.WRAPPERS
    host_probe.check(chosen, world, repeats, device)
    err_console.print(f"timing {len(chosen)} stack(s) of wrappers, {repeats} steps each, on {device} ...",
                      highlight=False)
    times = host_probe.measure(chosen, world=world, repeats=repeats, device=device)
    if as_json:
        print(json.dumps({"device": device, "world": world, "repeats": repeats,
                          "blocks": [t.to_dict() for t in times]}, indent=2))
        return
    table = Table(title=f"host time per transformer block and micro-batch on {device} (world {world})",
                  header_style="bold")
    for col in ("wrappers", "forward ms", "forward + backward ms (--block-host-ms)"):
        table.add_column(col, justify="left" if col == "wrappers" else "right")
    for t in times:
        table.add_row(t.wrapper, f"{1e3 * t.forward_s:.2f}", f"{1e3 * t.step_s:.2f}")
    console.print(table)
    last = times[-1]
    console.print(f"plan with your stack's figure, e.g. flopwise plan ... --block-host-ms {1e3 * last.step_s:.2f} "
                  f"({last.wrapper})", highlight=False)
    if device == "cpu":
        console.print("measured on the CPU alone: on the GPU server, --device cuda adds the kernel launches",
                      highlight=False)
