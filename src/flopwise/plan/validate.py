"""Validation against published measured runs (format: shared/published/README.md).

Each row gives a model shape, a cluster and (some of) a layout; blank layout cells are left to the search.
Each row is costed with the software profile of the stack that ran it (plan/software_rule.py): its `software`
or `stack` column, else the stack its text names (the Megatron-LM papers' runs, Narayanan et al. 2021 and
Korthikanti et al. 2022, get the 'megatron' profile: unfused softmax + dropout, fused LayerNorm, gradient
all-reduce after the backward; so do Megatron-family rows on GPUs without FlashAttention), else the family its
layout implies; a caller's `software` replaces the inference for rows without a `software` cell. A run whose
attention kernel differs from its profile's is costed with it: an optional `attention` column (flash | fa2 | fa3 |
unfused: spec.ATTENTION_KERNELS), else what the row's notes say, flash or unfused, never a class ("no flash
attention", "--use-flash-attn"); a row that says nothing and could not have run unfused attention (the scores
would not fit, or the layout needs a fused kernel) is costed with flash attention (row_plan). Megatron splits layers
uniformly across stages, so validation uses the uniform split.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
import statistics
from pathlib import Path

from flopwise.config_values import parse_bool, positive
from flopwise.errors import ConfigError, DataError, FlopwiseError, PlanError
from flopwise.hardware import GB, GIB, Accelerator, match_device_name, resolve_accelerator
from flopwise.layout import parse_value
from flopwise.models.config import ModelConfig
from flopwise.plan.cost import Constants, Plan
from flopwise.plan.memory import MEMORY_MEASURES, memory_error, printed_counterpart
from flopwise.plan.search import search
from flopwise.plan.software_rule import ATTENTION_COLUMNS, attention_in_text, infer_software
from flopwise.plan.spec import (
    ATTENTION_KERNELS,
    DISPATCHERS,
    FULL_PRECISIONS,
    LOW_PRECISIONS,
    PRECISIONS,
    SOFTWARE,
    Cluster,
    Training,
    attention_kernel,
    fallback_words,
    falls_back,
)
from flopwise.userfiles import read_text

# what the calibration set adds to the published format (shared/published/README.md) to say which stack ran a row and
# where it comes from; a row without them is costed with the profile its text or layout implies (plan/software_rule.py)
PROVENANCE_COLUMNS = ("source_id", "stack", "software", "citation", "notes")
# layout columns of the published CSVs (README in shared/published); cp is checked on its own
_LAYOUT_COLUMNS = ("tp", "pp", "dp", "vpp", "cp", "ep", "etp", "zero", "dp_shard", "sequence_parallel", "recompute",
                   "micro_batch")


def _cell(row: dict, key: str) -> str:
    return (row.get(key) or "").strip()


def _number(row: dict, key: str, default=None, *, integer: bool = True):
    """A cell as a finite positive number (a whole one when `integer`); blank gives `default`."""
    text = _cell(row, key)
    if not text:
        if default is None:
            raise DataError(f"column {key!r} is blank; the planner needs it")
        return default
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"column {key!r} = {text!r}: not a number") from None
    if integer and value.is_integer():
        value = int(value)
    try:
        return positive(f"column {key!r}", value, integer=integer)
    except ConfigError as exc:
        raise DataError(str(exc)) from None


def _int(row: dict, key: str, default: int | None = None) -> int:
    return _number(row, key, default)


def _accelerator(text: str, notes: list[str]) -> Accelerator:
    """The catalogue GPU of a row's cell: its name, else the name as papers write it ('A100-SXM4-40GB', 'NVIDIA
    H100 80GB HBM3'), with a note; blank: the A100-80GB of the published Megatron runs, with a note."""
    if not text:
        notes.append("gpu blank: A100-80GB assumed (the published Megatron runs' GPU)")
        return resolve_accelerator("A100-80GB")
    if text.lower() == "cpu":  # `--gpu cpu` measures this machine, which ran none of these rows
        raise DataError("gpu = 'cpu': a row names the accelerator it ran on; runs on this machine's CPU are checked "
                        "with `flopwise plan calibrate`")
    try:
        return resolve_accelerator(text)
    except ConfigError:
        known = match_device_name(text)
        if known is None:
            raise
        notes.append(f"gpu {text!r} read as {known.name}")
        return known


def _precision_word(text: str, notes: list[str]) -> str:
    """The training precision from a cell as sources write it ('BF16', 'amp_bf16', 'bf16-mixed', 'FP8 (delayed)');
    blank: bf16. A cell naming none of PRECISIONS is passed on for Training to refuse."""
    word = text.strip().lower().replace("float8", "fp8")  # torchao's and torchtitan's spelling
    if not word or word in PRECISIONS:
        return word or "bf16"
    if re.fullmatch(r"row[\s_-]?wise([\s_-]+(with[\s_-]+)?gw[\s_-]?hp)?", word) or (
            "fp8" in word and re.search(r"row[\s_-]?wise", word)):
        # torchao's row-wise recipes ('float8 rowwise', 'fp8_rowwise', torchtitan's recipe_name 'rowwise'), and
        # 'rowwise_with_gw_hp', whose weight-gradient GEMMs run in bf16
        read = "fp8-rowwise-gw-hp" if re.search(r"gw[\s_-]?hp", word) else "fp8-rowwise"
        notes.append(f"precision {text!r} read as {read}")
        return read
    if "fp8" in word and "mx" in word:  # MXFP8 as recipes spell it: 'fp8_mx' (Megatron-Bridge), 'bf16_with_mxfp8_mixed'
        notes.append(f"precision {text!r} read as mxfp8")
        return "mxfp8"
    if "tf32" in word and not any(p in word for p in PRECISIONS if p not in FULL_PRECISIONS):
        # fp32 storage with TF32 GEMMs ('tf32', 'fp32 (TF32)'); 'fp32, TF32 off' is fp32, and a bf16 or FP8 run
        # that also allows TF32 is read by its own precision below
        off = re.search(r"tf32[\s:=_-]*(off|disabled|false|0\b)|(no|without|not)[\s_-]+tf32", word)
        read = "fp32" if off else "tf32"
        notes.append(f"precision {text!r} read as {read}")
        return read
    if "fp4" in word:  # 'NVFP4', 'bf16_with_nvfp4_mixed', 'FP4'; 'MXFP4', 'fp4 (mxfp4 recipe)'
        read = "mxfp4" if "mx" in word else "nvfp4"
        notes.append(f"precision {text!r} read as {read}")
        return read
    # the low precisions first, as their runs also name their bf16 parts
    for precision in sorted(PRECISIONS, key=lambda p: p not in LOW_PRECISIONS):
        if precision in word:
            notes.append(f"precision {text!r} read as {precision}")
            return precision
    return word


def _recompute_word(text: str, notes: list[str]) -> str:
    """Activation recomputation as sources write it: 'Full', or a yes/no flag (Composer's activation_checkpointing:
    every block, i.e. full)."""
    word = text.strip().lower()
    flag = {"true": "full", "yes": "full", "on": "full", "false": "none", "no": "none", "off": "none"}.get(word)
    if flag:
        notes.append(f"recompute {text!r} read as {flag}")
        return flag
    return word


# cells that only a mixture-of-experts row may fill: on a dense row they would be dropped unread
_MOE_ONLY = ("top_k", "router", "shared_ffn", "etp", "dense_layers", "dense_ffn")
ATTENTION_VARIANTS = ("full", "mla", "sliding-window", "chunked")
# the cells of each attention variant that reads any (a window's, latent attention's), the first ones required
_VARIANT_CELLS = {"sliding-window": (("window",), ("global_every",)),
                  "mla": (("kv_lora_rank", "rope_head_dim"), ("q_lora_rank",))}
_REQUIRED_MEANS = {"window": "the window (tokens)", "kv_lora_rank": "the key-value latent width",
                   "rope_head_dim": "the rotated query / key dims per head"}


def _optional_int(row: dict, key: str) -> int:
    """An optional count: blank or zero is 0 (the fact is absent)."""
    return _int(row, key) if _cell(row, key).strip("0.") else 0


def _attention_variant(row: dict) -> dict:
    """The ModelConfig fields of an `attention_variant` (optional column; blank: full causal attention):
    `sliding-window` with its `window` (tokens) and `global_every` (every global_every-th block full; blank: none);
    `mla`, multi-head latent attention, with its `kv_lora_rank`, `rope_head_dim` and `q_lora_rank` (blank or 0: no
    query latent), `head_dim` being the unrotated query / key dims per head; `chunked` (Llama 4's) is refused by name,
    and a variant's cells on a row of another variant are a data error."""
    variant = _cell(row, "attention_variant").lower() or "full"
    if variant not in ATTENTION_VARIANTS:
        raise DataError(f"column 'attention_variant' = {variant!r}: must be one of {', '.join(ATTENTION_VARIANTS)}")
    for other, (required, optional) in _VARIANT_CELLS.items():
        stray = [key for key in (*required, *optional) if _cell(row, key).strip("0.")]
        if other != variant and stray:
            raise DataError(f"column {stray[0]!r} is set but attention_variant is {variant}: it is read with "
                            f"attention_variant = {other}")
    if variant == "full":
        return {}
    if variant not in _VARIANT_CELLS:
        raise PlanError(f"attention_variant = {variant}: the planner costs full causal, sliding-window and latent "
                        "(mla) attention only")
    required, optional = _VARIANT_CELLS[variant]
    blank = [key for key in required if not _cell(row, key).strip("0.")]
    if blank:
        raise DataError(f"attention_variant = {variant}: give " + " and ".join(
            f"{_REQUIRED_MEANS[key]} in the {key!r} column" for key in blank))
    if variant == "mla" and not _cell(row, "head_dim"):
        raise DataError("attention_variant = mla: give 'head_dim', the unrotated query / key dims per head")
    return {key: _optional_int(row, key) for key in (*required, *optional)}


def _experts(row: dict) -> dict:
    """The ModelConfig fields of a mixture-of-experts row (optional columns): `experts` routed experts per layer, each
    a SwiGLU of width `ffn`, `top_k` per token (blank: 2), chosen by a `router` (blank: linear, the published models'
    router; `attention` is Yuan 2.0-M32's), beside shared experts of total width `shared_ffn` (blank: none). A blank
    or zero `experts` is a dense row, whose MoE cells must be blank. What a row states that the planner does not cost
    is refused with its name: an MoE block every `moe_every` > 1 layers. Expert tensor parallelism other than tp
    (`etp`; blank: tp, Megatron's default) is a layout field (Layout.etp, read with the layout columns). Leading
    dense blocks: `dense_layers` of them with a SwiGLU of `dense_ffn` (DeepSeek-V3's first 3 of 18432)."""
    if not _optional_int(row, "experts"):
        stray = [key for key in _MOE_ONLY if _cell(row, key).strip("0.")]
        if stray:
            raise DataError(f"column {stray[0]!r} is set on a dense row (experts blank or 0)")
        return {}
    dense = {"dense_layers": _optional_int(row, "dense_layers"), "dense_ffn": _optional_int(row, "dense_ffn")}
    if bool(dense["dense_layers"]) != bool(dense["dense_ffn"]):
        raise DataError("columns 'dense_layers' and 'dense_ffn' go together: how many leading dense blocks, and their "
                        "SwiGLU width")
    if _int(row, "moe_every", 1) > 1:
        raise PlanError(f"moe_every = {_cell(row, 'moe_every')}: MoE blocks between dense ones are not costed yet")
    router = _cell(row, "router").lower() or "linear"
    return {"experts": _int(row, "experts"), "top_k": _int(row, "top_k", 2), "router": router,
            "shared_ffn": _optional_int(row, "shared_ffn"), **dense}


def _flag(row: dict, key: str) -> bool:
    """An optional true / false column; blank: false (the stacks' defaults)."""
    text = _cell(row, key)
    try:
        return parse_bool(f"column {key!r}", text) if text else False
    except ConfigError as exc:
        raise DataError(str(exc)) from None


def measured_memory(row: dict) -> tuple[float, str] | None:
    """(bytes, measure) of the peak memory per GPU a row's source printed (optional columns `measured_memory_gib` and
    `memory_measure`, one of memory.MEMORY_MEASURES or blank), or None where it printed none."""
    measure = _cell(row, "memory_measure").lower()
    if measure and measure not in MEMORY_MEASURES:
        raise DataError(f"column 'memory_measure' = {measure!r}: must be one of {', '.join(MEMORY_MEASURES)} or blank")
    if not _cell(row, "measured_memory_gib"):
        if measure:
            raise DataError("column 'memory_measure' is set but 'measured_memory_gib' is blank: give the printed peak")
        return None
    return _number(row, "measured_memory_gib", integer=False) * GIB, measure


def _stated_attention(row: dict) -> tuple[str, str | None] | None:
    """(kernel, the words of its text that say it; None for an `attention` cell) where the row says which attention
    kernel it ran: its `attention` cell, else its text (plan/software_rule.py); None where it says nothing."""
    cell = _cell(row, "attention").lower()
    if cell and cell not in ATTENTION_KERNELS:
        raise DataError(f"column 'attention' = {cell!r}: must be one of {', '.join(ATTENTION_KERNELS)}")
    if cell:
        return cell, None
    return next((s for s in (attention_in_text(_cell(row, c)) for c in ATTENTION_COLUMNS) if s is not None), None)


def _attention(row: dict, profile_attention: str, notes: list[str]) -> str | None:
    """The attention kernel the row states (kept even where it is its profile's, `profile_attention`: on a part without
    FlashAttention-2 a stated fused kernel wins over the profile's fallback, spec.attention_kernel); None: it states
    none. Read from its text, it gets a note where it differs from the profile's."""
    stated = _stated_attention(row)
    if stated is None:
        return None
    if stated[1] and stated[0] != profile_attention:
        notes.append(f"attention {stated[0]}: the row's text says {stated[1]!r}")
    return stated[0]


def row_inputs(row: dict, software: str | None = None) -> tuple[ModelConfig, Cluster, Training, dict, list[str]]:
    """Model, cluster, training and the fixed layout fields of one CSV row (plus notes on adjustments);
    `software`: the profile for a row without a `software` cell (None: inferred, plan/software_rule.py)."""
    notes: list[str] = []
    vocab = _int(row, "vocab")
    tp = _int(row, "tp", 0)
    if vocab % (tp or 8):  # Megatron pads the vocabulary to a multiple of 128 x tp (searched tp: up to 8)
        multiple = 128 * (tp or 8)
        padded = -(-vocab // multiple) * multiple
        notes.append(f"vocabulary {vocab} padded to {padded}")
        vocab = padded
    model = ModelConfig(
        vocab_size=vocab,
        layers=_int(row, "layers"),
        hidden=_int(row, "hidden"),
        heads=_int(row, "heads"),
        kv_heads=_int(row, "kv_heads", _int(row, "heads")),
        ffn=_int(row, "ffn"),
        seq_len=_int(row, "seq"),
        lfa=False,
        mlp=_cell(row, "mlp").lower() or "gelu",
        **_experts(row),
        **_attention_variant(row),
        # attention wider than the hidden size (Qwen3, Gemma: heads x head_dim > hidden; optional column)
        attn_dim=_int(row, "head_dim") * _int(row, "heads") if _cell(row, "head_dim") else 0,
    )
    acc = _accelerator(_cell(row, "gpu"), notes)
    gpus = _int(row, "gpus")
    intra = _number(row, "intra_node_GBps", 0.0, integer=False)
    inter = _number(row, "inter_node_GBps_per_gpu", 0.0, integer=False)
    cluster = Cluster(  # a blank link: the GPU's own reference figure (hardware.py)
        acc, gpus, _int(row, "gpus_per_node", 8), intra * GB if intra else None, inter * GB if inter else None
    )
    fixed: dict = {}
    for key in _LAYOUT_COLUMNS:
        text = _cell(row, key)
        if key == "recompute":
            text = _recompute_word(text, notes)
        if text:
            name, value = parse_value(key, text.removesuffix(".0"))
            fixed[name] = value
    precision = _precision_word(_cell(row, "precision"), notes)
    if software and not _cell(row, "software"):
        profile = software
    else:
        profile, why = infer_software(row, tp=fixed.get("tp", 0), pp=fixed.get("pp", 0), cp=fixed.get("cp", 0),
                                      vpp=fixed.get("vpp", 0), zero=fixed.get("zero", 0), precision=precision,
                                      accelerator=acc)
        if why:
            notes.append(why)
    attention = _attention(row, SOFTWARE[profile].attention, notes) if profile in SOFTWARE else None
    graphs = _cell(row, "cuda_graphs").lower()
    if graphs not in ("", "full", "partial", "none"):
        raise DataError(f"column 'cuda_graphs' = {graphs!r}: must be full, partial, none or blank")
    dispatcher = _cell(row, "dispatcher").lower() or "alltoall"  # blank: Megatron's default
    if dispatcher not in DISPATCHERS:
        raise DataError(f"column 'dispatcher' = {dispatcher!r}: must be {', '.join(DISPATCHERS)} or blank")
    training = Training(_int(row, "global_batch"), precision=precision, software=profile, attention=attention,
                        # the run gathered its sharded weights in FP8 (torchtitan's enable_fsdp_float8_all_gather,
                        # Megatron's --fp8-param-gather); overlapped its expert all-to-all with compute
                        fp8_all_gather=_flag(row, "fp8_all_gather"), cuda_graphs=graphs == "full",
                        a2a_overlap=_flag(row, "a2a_overlap"), dispatcher=dispatcher)
    if "vpp" in fixed and "pp" in fixed and fixed["vpp"] > 1:
        per_stage = model.layers // fixed["pp"]
        if model.layers % fixed["pp"] == 0 and per_stage % fixed["vpp"]:
            usable = max(v for v in range(1, fixed["vpp"] + 1) if per_stage % v == 0)
            notes.append(f"vpp={fixed['vpp']} cannot split {per_stage} layers per stage; used vpp={usable}")
            fixed["vpp"] = usable
    return model, cluster, training, fixed, notes


def row_plan(row: dict, software: str | None = None, constants: Constants | None = None
             ) -> tuple[ModelConfig, Cluster, Training, Plan, list[str]]:
    """One row's inputs and its plan: blank layout cells searched (uniform split, as Megatron splits), with
    `constants` (None: the defaults). The run ran, so a layout the memory model says cannot fit is still costed, with
    a note. Where the row does not say which attention kernel it ran and it would be costed unfused (its profile's
    kernel, or the profile's fallback on a part without FlashAttention: spec.attention_kernel), the run ran a fused
    one if it had to: when the layout needs one (context parallelism), or when the unfused s x s scores make the
    layout not fit and a fused kernel fits; the row is then costed with flash attention, and a note says why."""
    model, cluster, training, fixed, notes = row_inputs(row, software)

    def plan_of(run: Training, fit: bool) -> Plan:
        return search(model, cluster, run, fixed, top=1, split="uniform", explain=False, constants=constants,
                      require_fit=fit).plans[0]

    if falls_back(training, cluster.accelerator):
        notes.append(f"attention {attention_kernel(training, cluster.accelerator)}: "
                     + fallback_words(training, cluster.accelerator))
    try:
        return model, cluster, training, plan_of(training, True), notes
    except PlanError:
        pass
    try:
        unfitted = plan_of(training, False)  # a layout that ran though the memory model says it cannot fit
    except PlanError as exc:
        unfitted, refused = None, exc  # no layout at all: refused, unless a fused kernel was what it lacked
    if attention_kernel(training, cluster.accelerator) == "unfused" and _stated_attention(row) is None:
        fused = dataclasses.replace(training, attention="flash")
        try:
            plan = plan_of(fused, unfitted is not None)
        except PlanError:
            pass
        else:
            why = (f"unfused attention's {model.seq_len} x {model.seq_len} scores would not fit "
                   f"{cluster.accelerator.name} memory" if unfitted is not None else f"the layout needs it ({refused})")
            notes.append(f"attention flash: {why}, so the run used a fused kernel (FlashAttention, or a "
                         f"memory-efficient one where FlashAttention does not run)")
            return model, cluster, fused, plan, notes
    if unfitted is None:
        raise refused
    notes.append("predicted not to fit memory")
    return model, cluster, training, unfitted, notes


TOO_LARGE = "the row's numbers are too large to cost (the step time overflows)"


def validate_rows(rows: list[dict], label: str = "", software: str | None = None) -> list[dict]:
    """Predict each row: prediction, error and breakdown, or the specific reason it cannot be predicted
    (`software`: the profile for rows without a `software` cell; None: inferred per row)."""
    out = []
    for index, row in enumerate(rows):
        name = _cell(row, "model") or f"row {index + 1}"
        source = _cell(row, "source_id") or _cell(row, "source") or label
        measured = float("nan")
        try:
            printed, memory = measured_memory(row), {}
        except DataError as exc:  # a bad optional memory cell is said beside the step's prediction, not instead of it
            printed, memory = None, {"memory_message": str(exc)}
        if printed is not None:
            memory = {"measured_memory_gib": printed[0] / GIB, "memory_measure": printed[1] or None}
        try:
            measured = _number(row, "measured_step_s", integer=False)
            model, cluster, training, plan, notes = row_plan(row, software)
            if not math.isfinite(plan.step_time) or not all(math.isfinite(v) for v in plan.breakdown.values()):
                raise DataError(TOO_LARGE)
        except (FlopwiseError, OverflowError) as exc:  # one row's problem (a bad cell, a shape or layout refused, a
            # count too large for a float): the row's note
            out.append({"file": label, "source": source, "model": name,
                        "error_message": TOO_LARGE if isinstance(exc, OverflowError) else str(exc),
                        "measured_s": measured if math.isfinite(measured) else None,
                        **memory})
            continue
        error = plan.step_time / measured - 1.0
        if printed is not None:  # the planned peak against the printed one, as that counts it
            memory.update(planned_memory_gib=printed_counterpart(plan.peak_memory, printed[1]) / GIB,
                          memory_error=memory_error(plan.peak_memory, *printed))
        out.append(
            {
                "file": label,
                "source": source,
                "model": name,
                "software": training.software,
                "layout": plan.layout.short(),
                "predicted_s": plan.step_time,
                "measured_s": measured,
                "error": error,
                "abs_error": abs(error),
                "mfu": plan.mfu,
                "breakdown_percent": plan.breakdown_percent,
                "breakdown_s": dict(plan.breakdown),
                "peak_memory_gb": plan.peak_memory / 1e9,
                **memory,
                "notes": notes,
            }
        )
    return out


def summarise(rows: list[dict]) -> dict:
    """Step-time errors' median and max over the predicted rows, and the planned peak memory's over the predicted rows
    that printed one (`memory_rows`: 0, and None for the figures, where none did)."""
    errors = [r["abs_error"] for r in rows if "abs_error" in r]
    memory = [abs(r["memory_error"]) for r in rows if "memory_error" in r]
    return {"rows": len(rows), "predicted": len(errors),
            "median_abs_error": statistics.median(errors) if errors else None,
            "max_abs_error": max(errors, default=None),
            "memory_rows": len(memory),
            "memory_median_abs_error": statistics.median(memory) if memory else None,
            "memory_max_abs_error": max(memory, default=None)}


def validate_files(paths: list[str | Path], software: str | None = None) -> dict:
    """Predict every row of each published-runs CSV: {'rows': [...], 'files': {name (path where names repeat): summary},
    'sources': {source_id or source: summary}, 'summary'}."""
    rows: list[dict] = []
    files = {}
    paths = list(map(Path, paths))
    names = [p.name for p in paths]
    for path in paths:
        # a file is known by its name; where two share one (a/runs.csv, b/runs.csv), by its path as given
        label = path.name if names.count(path.name) == 1 else str(path)
        try:
            data = list(csv.DictReader(io.StringIO(read_text(path, "CSV file"), newline="")))
        except csv.Error as exc:
            raise DataError(f"cannot read CSV file {path}: {exc}") from None
        if not data:
            raise DataError(f"{path}: no rows")
        missing = {
            "layers",
            "hidden",
            "heads",
            "ffn",
            "vocab",
            "seq",
            "gpus",
            "global_batch",
            "measured_step_s",
        }
        missing -= set(data[0])
        if missing:
            raise DataError(
                f"{path}: missing column(s) {', '.join(sorted(missing))} "
                "(the format: ../shared/published/README.md beside the repository)"
            )
        got = validate_rows(data, label, software)
        files[label] = summarise(got)
        rows += got
    sources: dict[str, list[dict]] = {}
    for row in rows:
        sources.setdefault(row["source"], []).append(row)
    return {"rows": rows, "files": files, "sources": {k: summarise(v) for k, v in sources.items()},
            "summary": summarise(rows)}
