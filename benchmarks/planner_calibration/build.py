"""Build the planner calibration set (fit.csv, holdout.csv) from published training-throughput tables.

    .venv/bin/python benchmarks/planner_calibration/build.py          # rewrite fit.csv and holdout.csv
    .venv/bin/python benchmarks/planner_calibration/build.py --check  # exit 1 if the CSVs are stale

Every number below is transcribed from the table named in its source's `citation`; nothing is estimated
except where a row's `notes` say so. A step time is either printed by the source (`derived_from` =
"printed") or derived from a printed per-GPU token rate with

    step_s = global_batch x seq / (tokens_per_s_per_gpu x gpus)            (exact, no FLOP formula)

or, for the one source that printed only TFLOP/s per GPU (Llama 3), with the FLOP formula named in the row.
Columns are those of shared/published/*.csv (see its README) plus source_id, stack, software, citation, notes.
The split into fit and holdout is by whole source (HOLDOUT_SOURCES below; README.md explains it).
Keep this file free of flopwise imports but the software rule (flopwise.plan.software_rule, the one rule that
names a row's profile): the CSVs must not move when the planner's FLOP counts change.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from flopwise.plan.software_rule import software_for_stack

HERE = Path(__file__).resolve().parent

COLUMNS = (
    "source",
    "model",
    "layers",
    "hidden",
    "heads",
    "kv_heads",
    "ffn",
    "mlp",
    "vocab",
    "seq",
    "gpu",
    "gpus",
    "gpus_per_node",
    "intra_node_GBps",
    "inter_node_GBps_per_gpu",
    "tp",
    "pp",
    "dp",
    "vpp",
    "cp",
    "zero",
    "dp_shard",
    "sequence_parallel",
    "recompute",
    "global_batch",
    "micro_batch",
    "precision",
    "measured_step_s",
    "published_value",
    "derived_from",
    "source_id",
    "stack",
    "software",
    "citation",
    "notes",
    "fp8_all_gather",  # the FSDP gather moved FP8 weights (optional column; blank: off, the stacks' default)
)

# Whole sources held out of fitting: every GPU type and stack appears on both sides (README.md).
HOLDOUT_SOURCES = (
    "dgxc-24.11-gpt3-175b",
    "kempnerforge-weak-2026-06",
    "nemo-perf-24.07",
    "megatron-bridge-25.11",
    "torchtitan-h100-2024-08",
    "torchtitan-h100-2025-06",
    "torchtitan-h200-trainy-2025-06",
    "fms-fsdp-2024-05",
    "mt-nlg-2022",
    "llama3-paper-2024",
)

# Model shapes: layers, hidden, heads, kv_heads, ffn, mlp, vocab (nominal tokenizer vocabulary; Megatron pads
# it to a multiple of 128 x TP). Squared-ReLU (Nemotron) and GELU MLPs are both two matrices: mlp = gelu.
SHAPES = {
    "Llama-3-8B": (32, 4096, 32, 8, 14336, "swiglu", 128256),
    "Llama-3-70B": (80, 8192, 64, 8, 28672, "swiglu", 128256),
    "Llama-3.1-405B": (126, 16384, 128, 8, 53248, "swiglu", 128256),
    # dgxc-benchmarking v24.11.1 llama3.1_405b.yaml sets num_query_groups: 16 (the released model has 8)
    "Llama-3.1-405B-qg16": (126, 16384, 128, 16, 53248, "swiglu", 128256),
    "Llama-2-7B": (32, 4096, 32, 32, 11008, "swiglu", 32000),
    "Llama-2-13B": (40, 5120, 40, 40, 13824, "swiglu", 32000),
    "Llama-2-70B": (80, 8192, 64, 8, 28672, "swiglu", 32000),
    "FMS-34B": (48, 8192, 64, 8, 22016, "swiglu", 32000),  # fms-fsdp config_utils.py '34b'
    "Kempner-13B": (40, 5120, 40, 8, 17920, "swiglu", 128256),  # KempnerForge 13B: ffn 1.3x auto = 17,920
    "GPT3-5B": (24, 4096, 32, 32, 16384, "gelu", 50257),
    "GPT3-20B": (44, 6144, 48, 48, 24576, "gelu", 50257),
    "GPT3-175B": (96, 12288, 96, 96, 49152, "gelu", 50257),
    "Nemotron-3-8B": (32, 4096, 32, 32, 16384, "gelu", 256000),
    "Nemotron-3-22B": (40, 6144, 48, 48, 24576, "gelu", 256000),
    "Nemotron-4-15B": (32, 6144, 48, 8, 24576, "gelu", 256000),
    "Nemotron-4-340B": (96, 18432, 96, 8, 73728, "gelu", 256000),
    "BLOOM-176B": (70, 14336, 112, 112, 57344, "gelu", 250880),
    "MT-NLG-530B": (105, 20480, 128, 128, 81920, "gelu", 50257),
    # MPT (llm-foundry scripts/train/yamls/pretrain/mpt-*.yaml): MHA, GELU 4x, vocab 50368, tied embeddings
    "MPT-125M": (12, 768, 12, 12, 3072, "gelu", 50368),
    "MPT-760M": (24, 1536, 12, 12, 6144, "gelu", 50368),
    "MPT-1B": (24, 2048, 16, 16, 8192, "gelu", 50368),
    "MPT-3B": (32, 2560, 20, 20, 10240, "gelu", 50368),
    "MPT-7B": (32, 4096, 32, 32, 16384, "gelu", 50368),
    "MPT-13B": (40, 5120, 40, 40, 20480, "gelu", 50368),
    "MPT-30B": (48, 7168, 56, 56, 28672, "gelu", 50368),
    "MPT-70B": (80, 8192, 64, 64, 32768, "gelu", 50368),
}

DGX_H100 = {"gpu": "H100-SXM", "gpus_per_node": 8, "intra_node_GBps": 450, "inter_node_GBps_per_gpu": 50}
DGX_H100_NOTE = (
    "Cluster: DGX H100 (NVLink4 450 GB/s per direction; 8 x 400 Gb/s NDR per node = 50 GB/s per GPU, NVIDIA DGX "
    "H100 datasheet; the table names the system, not the fabric)."
)
TOKENS_DERIVATION = "tokens/s/GPU: step = global_batch x seq / (tokens_per_s_per_gpu x gpus)"


def _fmt(x: float) -> str:
    """Four significant digits: the sources print three or four."""
    return f"{x:.4g}" if x < 1000 else f"{x:.1f}"


def row(model: str, seq: int, gpus: int, **cells) -> dict:
    """One CSV row: the model's shape, the run's size and whatever cells the caller knows."""
    layers, hidden, heads, kv, ffn, mlp, vocab = SHAPES[model]
    out = dict.fromkeys(COLUMNS, "")
    out.update(
        model=model.replace("-qg16", ""),
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv,
        ffn=ffn,
        mlp=mlp,
        vocab=vocab,
        seq=seq,
        gpus=gpus,
    )
    for key, value in cells.items():
        if key not in out:
            raise KeyError(f"unknown column {key!r}")
        out[key] = value
    # not unknowns: without a pipeline there is no interleaving, without TP no sequence parallelism
    if out["pp"] == 1 and out["vpp"] == "":
        out["vpp"] = 1
    if out["tp"] == 1 and out["sequence_parallel"] == "":
        out["sequence_parallel"] = 0
    return out


def from_tokens(r: dict, tokens_per_gpu: float, printed: str | None = None) -> dict:
    """Fill measured_step_s from a printed per-GPU token rate."""
    step = int(r["global_batch"]) * int(r["seq"]) / (tokens_per_gpu * int(r["gpus"]))
    r["measured_step_s"] = _fmt(step)
    r["published_value"] = printed or f"{tokens_per_gpu:g} tokens/s/GPU"
    r["derived_from"] = TOKENS_DERIVATION
    return r


def printed(r: dict, step_s: float, text: str | None = None) -> dict:
    r["measured_step_s"] = _fmt(step_s)
    r["published_value"] = text or f"{step_s:g} s/step"
    r["derived_from"] = "printed"
    return r


def dp_of(gpus: int, tp: int = 1, pp: int = 1, cp: int = 1) -> int:
    assert gpus % (tp * pp * cp) == 0, (gpus, tp, pp, cp)
    return gpus // (tp * pp * cp)


# ---------------------------------------------------------------------------------------------------------
def nemo_perf_2407() -> list[dict]:
    src = "NVIDIA NeMo performance summary, container 24.07 (DGX-H100, FP8)"
    cite = (
        "NVIDIA/NeMo docs/source/performance/performance_summary.md at 9c5c5e9709 (2024-09-09), Pretraining "
        "table; https://github.com/NVIDIA/NeMo/blob/9c5c5e9709/docs/source/performance/performance_summary.md"
    )
    # model, gpus, gbs, mbs, seq, tp, pp, cp, vp, tokens/s/GPU (Model TFLOP/s/GPU printed beside it)
    table = [
        ("GPT3-5B", 64, 2048, 4, 2048, 1, 1, 1, 1, 23406, 765),
        ("GPT3-20B", 64, 256, 2, 2048, 2, 1, 1, 1, 5851, 750),
        ("GPT3-175B", 128, 256, 1, 2048, 4, 8, 1, 6, 716, 771),
        ("GPT3-175B", 512, 2048, 2, 2048, 4, 8, 1, 6, 825, 888),
        ("Llama-2-7B", 8, 128, 1, 4096, 1, 1, 1, 1, 16934, 780),
        ("Llama-2-13B", 16, 128, 1, 4096, 1, 4, 1, 10, 8715, 760),
        ("Llama-2-70B", 64, 128, 1, 4096, 4, 4, 1, 20, 1728, 768),
        ("Nemotron-3-8B", 64, 256, 4, 4096, 2, 1, 1, 1, 12507, 643),
        ("Nemotron-3-22B", 64, 256, 2, 4096, 2, 4, 1, 10, 4312, 562),
        ("Nemotron-4-340B", 128, 32, 1, 4096, 8, 8, 1, 12, 326, 686),
        ("Llama-3-8B", 8, 128, 1, 8192, 1, 1, 2, 1, 12273, 711),
        ("Llama-3-70B", 64, 128, 1, 8192, 4, 4, 2, 5, 1524, 734),
    ]
    out = []
    for model, gpus, gbs, mbs, seq, tp, pp, cp, vp, tps, tflops in table:
        r = row(
            model, seq, gpus, **DGX_H100, tp=tp, pp=pp, dp=dp_of(gpus, tp, pp, cp), vpp=vp, cp=cp, zero=1,
            sequence_parallel=int(tp > 1), global_batch=gbs, micro_batch=mbs, precision="fp8",
        )  # fmt: skip
        from_tokens(r, tps, f"{tps} tokens/s/GPU ({tflops} model TFLOP/s/GPU)")
        r["notes"] = (
            "NeMo 1.x/Megatron-Core, Transformer Engine FP8 (per-tensor current scaling per the page), "
            "bf16 attention. zero=1: NeMo recipes use the distributed optimizer (distributed_fused_adam, as in "
            "the same-era dgxc-benchmarking yamls), not stated in the table; sequence_parallel assumed on when "
            "tp > 1 (NeMo default with TP). Recompute not stated (blank). " + DGX_H100_NOTE
        )
        out.append(r)
    return _finish(out, "nemo-perf-24.07", src, "nemo", cite)


def megatron_bridge_2511() -> list[dict]:
    src = "NVIDIA Megatron-Bridge performance summary, NeMo container 25.11 (DGX-H100, FP8-CS)"
    cite = (
        "NVIDIA-NeMo/Megatron-Bridge docs/performance-summary-archive.md, section '25.11 NeMo Container', "
        "System: DGX-H100 table; https://github.com/NVIDIA-NeMo/Megatron-Bridge/blob/main/docs/"
        "performance-summary-archive.md"
    )
    table = [  # model, gpus, gbs, mbs, seq, fsdp, tp, pp, cp, vp, tokens/s/GPU, model TFLOP/s/GPU
        ("Llama-3-8B", 8, 128, 1, 8192, 8, 1, 1, 1, 1, 14451, 744),
        ("Llama-3-70B", 64, 128, 1, 8192, 0, 4, 8, 1, 5, 1602, 719),
        ("Llama-3.1-405B", 1024, 512, 1, 8192, 0, 8, 8, 2, 8, 292, 737),
    ]
    out = []
    for model, gpus, gbs, mbs, seq, fsdp, tp, pp, cp, vp, tps, tflops in table:
        r = row(
            model, seq, gpus, **DGX_H100, tp=tp, pp=pp, dp=dp_of(gpus, tp, pp, cp), vpp=vp, cp=cp, zero=3 if fsdp else
            1, sequence_parallel=int(tp > 1), global_batch=gbs, micro_batch=mbs, precision="fp8",
        )  # fmt: skip
        from_tokens(r, tps, f"{tps} tokens/s/GPU ({tflops} model TFLOP/s/GPU)")
        r["notes"] = (
            (
                "Megatron-FSDP over all 8 GPUs (FSDP column = 8) -> zero=3. "
                if fsdp
                else "DDP with the distributed optimizer assumed (FSDP column = 0) -> zero=1. "
            )
            + "FP8-CS = per-tensor current scaling (Transformer Engine). sequence_parallel assumed on when tp > 1. "
            "Recompute not stated (blank). " + DGX_H100_NOTE
        )
        out.append(r)
    return _finish(out, "megatron-bridge-25.11", src, "nemo", cite)


def dgxc_2411() -> list[dict]:
    src = "NVIDIA dgxc-benchmarking v24.11.1 (NeMo 24.09/24.11, DGX H100)"
    base = "https://github.com/NVIDIA/dgxc-benchmarking/blob/35a9aec/"
    out = []

    def add(model, file, yaml, gpus, gbs, seq, tp, pp, cp, vp, mbs, sp, rc, prec, step, extra=""):
        r = row(
            model, seq, gpus, **DGX_H100, tp=tp, pp=pp, dp=dp_of(gpus, tp, pp, cp), vpp=vp, cp=cp, zero=1,
            sequence_parallel=sp, recompute=rc, global_batch=gbs, micro_batch=mbs, precision=prec,
        )  # fmt: skip
        printed(r, step, f"{step} s/step (Training step time)")
        # one source per README (each is its own table and model)
        family = {"llama3.1": "llama3.1-", "nemo_megatron": "gpt3-", "nemotron": "nemotron4-"}[file.split("/")[0]]
        r["source_id"] = "dgxc-24.11-" + family + file.split("_")[-1].removesuffix(".md")
        r["citation"] = (
            f"NVIDIA/dgxc-benchmarking v24.11.1 (commit 35a9aec) {file}, 'Expected Performance' table "
            f"({prec.upper()}, {gpus} GPUs); layout from {yaml}; {base}{file}"
        )
        r["notes"] = (
            "Printed seconds per step (last step of a 100-step run). Layout, MBS, sequence_parallel and "
            f"recompute from {yaml} (activations_checkpoint_granularity = {rc if rc != 'none' else 'null'}); "
            "distributed_fused_adam -> zero=1; overlap_grad_sync/overlap_param_sync on; TP comm overlap (userbuffers) "
            "on where tp > 1. " + extra + DGX_H100_NOTE
        )
        out.append(r)

    f8, y8 = "llama3.1/README_8b.md", "llama3.1/llama3.1_8b.yaml"
    for gpus, bf16, fp8 in ((8, 12.91, 9.67), (128, 13.10, 9.82)):
        add("Llama-3-8B", f8, y8, gpus, 16 * gpus, 8192, 1, 1, 2, 1, 1, 0, "none", "bf16", bf16)
        add("Llama-3-8B", f8, y8, gpus, 16 * gpus, 8192, 1, 1, 2, 1, 1, 0, "none", "fp8", fp8)
    f70, y70 = "llama3.1/README_70b.md", "llama3.1/llama3.1_70b.yaml"
    for gpus, bf16, fp8 in ((64, 14.72, 11.01), (2048, 14.98, 11.39)):
        add("Llama-3-70B", f70, y70, gpus, 2 * gpus, 8192, 4, 4, 2, 5, 1, 1, "none", "bf16", bf16)
        add("Llama-3-70B", f70, y70, gpus, 2 * gpus, 8192, 4, 4, 2, 5, 1, 1, "none", "fp8", fp8)
    f405, y405 = "llama3.1/README_405b.md", "llama3.1/llama3.1_405b.yaml"
    note405 = "The yaml sets num_query_groups: 16 (kv_heads 16, not the released model's 8). "
    for gpus, gbs, bf16, fp8 in ((576, 252, 17.20, 11.24), (2304, 1008, 17.62, 12.35)):
        for prec, step in (("bf16", bf16), ("fp8", fp8)):
            add("Llama-3.1-405B-qg16", f405, y405, gpus, gbs, 8192, 8, 9, 2, 7, 1, 1, "none", prec, step, note405)
    f175, y175 = "nemo_megatron/README_175b.md", "nemo_megatron/gpt3_175b_hydra.yaml"
    for gpus, step in ((128, 8.91), (256, 8.95), (512, 9.09), (1024, 9.01), (2048, 9.02)):
        add("GPT3-175B", f175, y175, gpus, 2 * gpus, 2048, 4, 8, 1, 12, 1, 1, "none", "bf16", step)
    for gpus, step in ((128, 5.92), (2048, 6.24)):
        add(
            "GPT3-175B",
            f175,
            y175,
            gpus,
            2 * gpus,
            2048,
            4,
            8,
            1,
            12,
            1,
            1,
            "none",
            "fp8",
            step,
            "FP8 with fp8_params (FP8 parameter all-gather). ",
        )
    f15, y15 = "nemotron/README_15b.md", "nemotron/nemotron4-15b-synth.yaml"
    for gpus, bf16, fp8 in ((16, 2.83, 2.08), (2048, 2.96, 2.18)):
        add("Nemotron-4-15B", f15, y15, gpus, 4 * gpus, 4096, 4, 1, 1, 1, 4, 1, "none", "bf16", bf16)
        add("Nemotron-4-15B", f15, y15, gpus, 4 * gpus, 4096, 4, 1, 1, 1, 4, 1, "none", "fp8", fp8)
    f340, y340 = "nemotron/README_340b.md", "nemotron/nemotron4-340b-synth.yaml"
    for gpus, bf16, fp8 in ((128, 4.61, 3.16), (2048, 4.84, 3.49)):
        add("Nemotron-4-340B", f340, y340, gpus, gpus // 4, 4096, 8, 8, 1, 12, 1, 1, "selective", "bf16", bf16)
        add("Nemotron-4-340B", f340, y340, gpus, gpus // 4, 4096, 8, 8, 1, 12, 1, 1, "selective", "fp8", fp8)
    return _finish(out, "", src, "nemo", None)


def torchtitan_a100_2404() -> list[dict]:
    src = "torchtitan docs/performance.md, FSDP2 on 64 A100-80GB (2024-04)"
    cite = (
        "pytorch/torchtitan docs/performance.md at 1ea476e9f (2024-04-24), Llama 3 and Llama 2 tables; "
        "https://github.com/pytorch/torchtitan/blob/1ea476e9f/docs/performance.md"
    )
    cluster = {"gpu": "A100-80GB", "gpus_per_node": 8, "intra_node_GBps": 300}
    table = [  # model, seq, local batch, AC as printed, recompute, WPS (tokens/s/GPU), MFU printed
        ("Llama-3-8B", 8192, 1, "selective op", "selective", 2973, "58.2%"),
        ("Llama-3-70B", 8192, 1, "full", "full", 331, "51.7%"),
        ("Llama-2-13B", 4096, 2, "no", "none", 2162, "61.1%"),
        ("Llama-2-13B", 4096, 2, "selective op", "selective", 1904, "53.8%"),
        ("Llama-2-70B", 4096, 1, "selective op", "selective", 355, "50.8%"),
        ("Llama-2-70B", 4096, 2, "full", "full", 353, "50.5%"),
    ]
    out = []
    for model, seq, lbs, ac, rc, wps, mfu in table:
        r = row(
            model, seq, 64, **cluster, tp=1, pp=1, dp=64, cp=1, zero=3, sequence_parallel=0, recompute=rc,
            global_batch=64 * lbs, micro_batch=lbs, precision="bf16",
        )  # fmt: skip
        from_tokens(r, wps, f"{wps} WPS (tokens/s/GPU), MFU {mfu}, AC {ac}")
        r["notes"] = (
            "FSDP2 (fully_shard, reshard after forward) over 64 GPUs, no gradient accumulation, bf16 params with "
            "fp32 gradient reduce-scatter (torchtitan default mixed_precision_reduce = float32), eager (no "
            "compile). 'selective op' = torchtitan's per-op SAC (saves matmul outputs except every other one, "
            "recomputes the rest): mapped to recompute=selective, an approximation. Inter-node network not "
            "stated (blank); rows with 'selective layer' AC (every other block) are left out because the "
            "vocabulary has no such mode. WPS is per GPU (tokens / time / non-data-parallel size)."
        )
        out.append(r)
    return _finish(out, "torchtitan-a100-2024-04", src, "torchtitan", cite)


# the catalogue's H100-GT-500W (issue 14): what the source says about its machines, instead of the 700 W SXM
GRAND_TETON = {"gpu": "H100-GT-500W", "gpus_per_node": 8, "intra_node_GBps": 450, "inter_node_GBps_per_gpu": 50}
GRAND_TETON_NOTE = (
    "Hardware: Grand Teton H100 with 96 GB HBM2e at 2.4 TB/s and a 500 W power limit (gpu H100-GT-500W, not "
    "the 80 GB HBM3 3.35 TB/s 700 W SXM; the source says its peak lies between SXM and NVL), NVLink in the "
    "node, 400 Gb/s RDMA per GPU."
)


def torchtitan_h100_2408() -> list[dict]:
    src = "torchtitan docs/performance.md, Llama 3.1 405B on 128 H100 (2024-08)"
    cite = (
        "pytorch/torchtitan docs/performance.md at 3faaa1a0d (2024-08-23), 'Llama 3.1 performance numbers' "
        "table; https://github.com/pytorch/torchtitan/blob/3faaa1a0d/docs/performance.md"
    )
    out = []
    for prec, wps, mfu in (("bf16", 109, "29.0%"), ("fp8", 177, "23.46%")):
        r = row(
            "Llama-3.1-405B", 8192, 128, **GRAND_TETON, tp=8, pp=1, dp=16, cp=1, zero=3, sequence_parallel=1,
            recompute="full", global_batch=32, micro_batch=2, precision=prec,
            fp8_all_gather="true" if prec == "fp8" else "",
        )  # fmt: skip
        from_tokens(r, wps, f"{wps} WPS (tokens/s/GPU), MFU {mfu}")
        r["notes"] = (
            "2D: FSDP2 over 16 x TP 8 (sequence-parallel norms), local batch 2, full AC; train_configs/"
            "llama3_405b.toml at that commit: compile on, async TP on, Float8 with FP8 all-gather (fp8 row; "
            "the bf16 row has Float8 off). " + GRAND_TETON_NOTE.replace("96 GB", "94-95 GB")
        )
        out.append(r)
    return _finish(out, "torchtitan-h100-2024-08", src, "torchtitan", cite)


def torchtitan_h100_2412() -> list[dict]:
    src = "torchtitan benchmarks/llama3_h100_202412_torchtitan.md (H100, 2024-12)"
    url = "https://github.com/pytorch/torchtitan/blob/main/benchmarks/llama3_h100_202412_torchtitan.md"
    sac = "selective op AC (per-op SAC, mapped to recompute=selective); "
    fp8 = "Float8 linears (bf16 attention). "
    cpn = (
        "Context parallel (ring attention, torch SDPA) over the CP ranks; FSDP shards over dp x cp; local batch 1, full AC. "
    )
    ppn = (
        "FSDP 8 x TP 8 x PP 8, full AC, compile, Float8, async TP. zero=1: with PP torchtitan's FSDP2 does not "
        "reshard after forward and syncs gradients once per step, so the communication and memory are ZeRO-1's. "
        "micro_batch and vpp are torchtitan's defaults at 9dec370 (n_microbatches = pp = 8; interleaved "
        "schedule = 2 stages per rank), not stated by the benchmark; 126 layers do not split evenly. "
    )
    pp6 = ppn.replace("n_microbatches = pp = 8", "n_microbatches = 8")
    # fmt: off
    # table, model, seq, gpus, tp, pp, cp, dp, zero, local batch, micro batch, vpp, recompute, precision,
    # TPS/GPU, what the table calls the run, notes
    table = [
        (1, "Llama-3-8B", 8192, 8, 1, 1, 1, 8, 3, 2, 2, 1, "selective", "bf16", 5762, "FSDP, eager",
         "FSDP2 over 8, local batch 2, global 16, " + sac),
        (1, "Llama-3-8B", 8192, 8, 1, 1, 1, 8, 3, 2, 2, 1, "selective", "fp8", 8532, "FSDP + torch.compile + Float8",
         "FSDP2 over 8, local batch 2, " + sac + fp8),
        (3, "Llama-3-8B", 8192, 128, 1, 1, 1, 128, 3, 2, 2, 1, "selective", "bf16", 5605, "FSDP, eager",
         "FSDP2 over 128, local batch 2, global 256, " + sac),
        (3, "Llama-3-8B", 8192, 128, 1, 1, 1, 128, 3, 2, 2, 1, "selective", "fp8", 8380,
         "FSDP + torch.compile + Float8", "FSDP2 over 128, " + sac + fp8),
        (2, "Llama-3-8B", 32768, 8, 1, 1, 1, 8, 3, 1, 1, 1, "full", "fp8", 3890,
         "FSDP 8, CP 1 + torch.compile + Float8", cpn),
        (2, "Llama-3-8B", 65536, 8, 1, 1, 2, 4, 3, 1, 1, 1, "full", "fp8", 2540,
         "FSDP 4, CP 2 + torch.compile + Float8", cpn),
        (2, "Llama-3-8B", 131072, 8, 1, 1, 4, 2, 3, 1, 1, 1, "full", "fp8", 1071,
         "FSDP 2, CP 4 + torch.compile + Float8", cpn),
        (2, "Llama-3-8B", 262144, 8, 1, 1, 8, 1, 3, 1, 1, 1, "full", "fp8", 548,
         "FSDP 1, CP 8 + torch.compile + Float8", cpn),
        (4, "Llama-3-70B", 8192, 256, 8, 1, 1, 32, 3, 16, 16, 1, "full", "fp8", 829,
         "2D (FSDP 32, TP 8) + torch.compile + Float8",
         "Local batch 16 per data-parallel rank, full AC, vanilla (not async) TP. "),
        (5, "Llama-3.1-405B", 8192, 512, 8, 8, 1, 8, 1, 32, 4, 1, "full", "fp8", 100, "3D, 1F1B schedule", ppn),
        (5, "Llama-3.1-405B", 8192, 512, 8, 8, 1, 8, 1, 32, 4, 2, "full", "fp8", 128, "3D, Interleaved 1F1B", ppn),
        (6, "Llama-3.1-405B", 32768, 512, 8, 8, 1, 8, 1, 8, 1, 1, "full", "fp8", 76, "4D, FSDP 8, CP 1, 1F1B", pp6),
        (6, "Llama-3.1-405B", 262144, 512, 8, 8, 8, 1, 1, 8, 1, 1, "full", "fp8", 16, "4D, FSDP 1, CP 8, 1F1B", pp6),
    ]
    # fmt: on
    out = []
    for number, model, seq, gpus, tp, pp, cp, dp, zero, lbs, mbs, vpp, rc, prec, tps, what, extra in table:
        r = row(
            model, seq, gpus, **GRAND_TETON, tp=tp, pp=pp, dp=dp, vpp=vpp, cp=cp, zero=zero,
            sequence_parallel=int(tp > 1), recompute=rc, global_batch=dp * lbs, micro_batch=mbs, precision=prec,
        )  # fmt: skip
        from_tokens(r, tps, f"{tps} TPS/GPU ({what})")
        r["citation"] = f"pytorch/torchtitan benchmarks/llama3_h100_202412_torchtitan.md, Table {number}; {url}"
        r["notes"] = f"{what}. torch/torchao/torchtitan of 2024-12-23/26 (torchtitan 9dec370). " + extra + GRAND_TETON_NOTE
        out.append(r)
    return _finish(out, "torchtitan-h100-2024-12", src, "torchtitan", None)


def torchtitan_asynctp_2506() -> list[dict]:
    src = "torchtitan benchmarks/asyncTP_llama3_h100_2025-06_torchtitan.md (H100, 2025-06)"
    cite = (
        "pytorch/torchtitan benchmarks/asyncTP_llama3_h100_2025-06_torchtitan.md, 'Vanilla TP tokens/sec' column; "
        "https://github.com/pytorch/torchtitan/blob/main/benchmarks/asyncTP_llama3_h100_2025-06_torchtitan.md"
    )
    out = []
    for model, gpus, dp, lbs, rc, prec, tps, what in (
        ("Llama-3-70B", 256, 32, 16, "full", "bf16", 597.3, "None (bfloat16), vanilla TP"),
        ("Llama-3-70B", 256, 32, 16, "full", "fp8", 809.8, "float8 tensorwise, vanilla TP"),
        ("Llama-3-8B", 64, 8, 12, "selective", "bf16", 4378, "None (bfloat16), vanilla TP"),
    ):
        r = row(
            model, 8192, gpus, **GRAND_TETON, tp=8, pp=1, dp=dp, cp=1, zero=3, sequence_parallel=1, recompute=rc,
            global_batch=dp * lbs, micro_batch=lbs, precision=prec,
        )  # fmt: skip
        from_tokens(r, tps, f"{tps} tokens/s/GPU ({what})")
        r["notes"] = (
            f"FSDP {dp} x TP 8, torch.compile, local batch {lbs} per data-parallel rank, "
            + ("full AC. " if rc == "full" else "per-op SAC (mapped to selective). ")
            + "seq 8192 from the llama3 train configs at 820504e. "
            + GRAND_TETON_NOTE
        )
        out.append(r)
    return _finish(out, "torchtitan-h100-2025-06", src, "torchtitan", cite)


def torchtitan_h200_trainy() -> list[dict]:
    src = "torchtitan benchmarks/llama3-8b_h200_202506_trainy-whitefiber.md (H200, 2025-06)"
    cite = (
        "pytorch/torchtitan benchmarks/llama3-8b_h200_202506_trainy-whitefiber.md, results table; "
        "https://github.com/pytorch/torchtitan/blob/main/benchmarks/llama3-8b_h200_202506_trainy-whitefiber.md"
    )
    out = []
    for nodes, tps in ((4, 10938), (8, 10753)):
        gpus = 8 * nodes
        r = row(
            "Llama-3-8B", 8192, gpus, gpu="H200", gpus_per_node=8, intra_node_GBps=450, inter_node_GBps_per_gpu=50,
            tp=1, pp=1, dp=gpus, cp=1, zero=3, sequence_parallel=0, recompute="selective", global_batch=2 * gpus,
            micro_batch=2, precision="fp8", fp8_all_gather="true",
        )  # fmt: skip
        from_tokens(r, tps, f"{tps} TPS/GPU ({nodes} nodes)")
        r["notes"] = (
            "FSDP2 over all GPUs, local batch 2, torch.compile, Float8 linears with FP8 all-gather and "
            "force_recompute_fp8_weight_in_bwd; llama3_8b.toml at e7c0cae: seq 8192, selective op AC (mapped to "
            "selective). 8 x H200 per node over NVLink, 400 Gb/s per GPU (CX-7)."
        )
        out.append(r)
    return _finish(out, "torchtitan-h200-trainy-2025-06", src, "torchtitan", cite)


def llm_foundry() -> list[dict]:
    src = "MosaicML llm-foundry MPT training benchmarks (Composer FSDP)"
    url = "https://github.com/mosaicml/llm-foundry/blob/495218376/scripts/train/benchmarking/README.md"
    sections = {
        "h100_large": ("H100 80GB BF16 (Large Scale, >= 128 GPUs)", "H100-SXM", None),
        "h100": ("H100 80GB BF16", "H100-SXM", None),
        "h100_fp8": ("H100 80GB FP8", "H100-SXM", None),
        "a100_80": ("A100 80GB with 1600 Gbps node-node interconnect (RoCE)", "A100-80GB", 25),
        "a100_40": ("A100 40GB with 1600 Gbps node-node interconnect (RoCE)", "A100-40GB", 25),
    }
    # section, model, seq, gpus, micro batch, grad accum, global batch, tokens/s/GPU, precision, MP mode,
    # sharding, activation checkpointing
    table = [
        ("h100_large", "MPT-70B", 2048, 512, 8, 1, 4096, 1007, "amp_bf16", "DEFAULT", "FULL_SHARD", True),
        ("h100_large", "MPT-70B", 2048, 128, 8, 1, 1024, 1058, "amp_bf16", "DEFAULT", "FULL_SHARD", True),
        ("h100_large", "MPT-30B", 2048, 512, 8, 1, 4096, 2115, "amp_bf16", "DEFAULT", "FULL_SHARD", True),
        ("h100_large", "MPT-13B", 2048, 512, 16, 1, 8192, 4952, "amp_bf16", "DEFAULT", "FULL_SHARD", True),
        ("h100_large", "MPT-7B", 2048, 512, 6, 1, 3072, 9670, "amp_bf16", "DEFAULT", "FULL_SHARD", False),
        ("h100_large", "MPT-7B", 2048, 128, 6, 1, 768, 10475, "amp_bf16", "DEFAULT", "FULL_SHARD", False),
        ("h100_large", "MPT-3B", 2048, 512, 8, 1, 4096, 21664, "amp_bf16", "DEFAULT", "SHARD_GRAD_OP", False),
        ("h100_large", "MPT-1B", 2048, 512, 12, 1, 6144, 39837, "amp_bf16", "DEFAULT", "SHARD_GRAD_OP", False),
        ("h100", "MPT-70B", 2048, 64, 8, 4, 2048, 1039, "amp_bf16", "DEFAULT", "FULL_SHARD", True),
        ("h100", "MPT-30B", 2048, 8, 3, 21, 504, 2002, "amp_bf16", "DEFAULT", "FULL_SHARD", True),
        ("h100", "MPT-13B", 2048, 8, 2, 1, 16, 4792, "amp_bf16", "DEFAULT", "FULL_SHARD", False),
        ("h100", "MPT-7B", 2048, 8, 6, 1, 48, 10643, "amp_bf16", "DEFAULT", "FULL_SHARD", False),
        ("h100", "MPT-7B", 8192, 8, 8, 2, 128, 6935, "amp_bf16", "DEFAULT", "FULL_SHARD", True),
        ("h100", "MPT-1B", 2048, 8, 14, 1, 112, 45455, "amp_bf16", "DEFAULT", "FULL_SHARD", False),
        ("h100_fp8", "MPT-3B", 2048, 8, 10, 6, 480, 30586, "amp_fp8", "DEFAULT", "FULL_SHARD", False),
        ("h100_fp8", "MPT-1B", 8192, 8, 2, 4, 64, 32010, "amp_fp8", "DEFAULT", "FULL_SHARD", False),
        ("a100_80", "MPT-70B", 2048, 64, 8, 4, 2048, 410, "bf16", "PURE", "FULL_SHARD", True),
        ("a100_80", "MPT-30B", 2048, 8, 3, 21, 504, 916, "amp_bf16", "DEFAULT", "FULL_SHARD", True),
        ("a100_80", "MPT-13B", 2048, 8, 2, 3, 48, 2262, "amp_bf16", "DEFAULT", "FULL_SHARD", False),
        ("a100_80", "MPT-7B", 2048, 8, 6, 2, 96, 4641, "amp_bf16", "DEFAULT", "FULL_SHARD", False),
        ("a100_80", "MPT-7B", 8192, 8, 8, 2, 128, 3206, "amp_bf16", "DEFAULT", "FULL_SHARD", True),
        ("a100_80", "MPT-1B", 2048, 8, 14, 4, 448, 20513, "amp_bf16", "DEFAULT", "FULL_SHARD", False),
        ("a100_80", "MPT-125M", 2048, 8, 32, 2, 512, 141737, "amp_bf16", "DEFAULT", "FULL_SHARD", False),
        ("a100_40", "MPT-70B", 2048, 128, 4, 1, 512, 376, "bf16", "PURE", "FULL_SHARD", True),
        ("a100_40", "MPT-30B", 2048, 128, 6, 1, 768, 865, "bf16", "PURE", "FULL_SHARD", True),
        ("a100_40", "MPT-13B", 2048, 128, 16, 1, 2048, 1972, "bf16", "PURE", "FULL_SHARD", True),
        ("a100_40", "MPT-7B", 2048, 128, 18, 1, 2304, 3623, "bf16", "PURE", "FULL_SHARD", True),
        ("a100_40", "MPT-3B", 2048, 128, 6, 1, 768, 9538, "bf16", "PURE", "FULL_SHARD", False),
        ("a100_40", "MPT-760M", 2048, 128, 12, 1, 1536, 28940, "bf16", "PURE", "FULL_SHARD", False),
        ("a100_40", "MPT-125M", 2048, 128, 26, 1, 3328, 123936, "bf16", "PURE", "FULL_SHARD", False),
    ]
    out = []
    for sec, model, seq, gpus, mbs, ga, gbs, tps, prec, mp, shard, ac in table:
        title, gpu, inter = sections[sec]
        assert mbs * ga * gpus == gbs, (model, gpus)
        cells = {"gpu": gpu, "gpus_per_node": 8, "intra_node_GBps": 450 if gpu.startswith("H100") else 300}
        if inter:
            cells["inter_node_GBps_per_gpu"] = inter
        r = row(
            model, seq, gpus, **cells, tp=1, pp=1, dp=gpus, cp=1, zero=3 if shard == "FULL_SHARD" else 2,
            sequence_parallel=0, recompute="full" if ac else "none", global_batch=gbs, micro_batch=mbs,
            precision="fp8" if prec == "amp_fp8" else "bf16",
        )  # fmt: skip
        from_tokens(r, tps, f"{tps} Throughput (T/s/GPU)")
        r["citation"] = f"mosaicml/llm-foundry scripts/train/benchmarking/README.md at 495218376, table '{title}'; {url}"
        r["notes"] = (
            f"Composer FSDP ({shard} -> zero={'3' if shard == 'FULL_SHARD' else '2'}), MP mode {mp} "
            f"({'bf16 params and communication' if mp == 'PURE' else 'autocast compute, fp32 params/reduce'}), "
            f"precision {prec}{' (Transformer Engine FP8 linears)' if prec == 'amp_fp8' else ''}, grad accum {ga}, "
            f"activation checkpointing {ac} (Composer checkpoints every block: recompute="
            f"{'full' if ac else 'none'}). MPT: MHA, GELU 4x, no biases, tied embeddings, flash attention. "
            f"GPU '{gpu.split('-')[0].lower()}_{'40gb' if gpu.endswith('40GB') else '80gb'}' taken as the SXM part. "
            + (
                "Interconnect: 1600 Gbps RoCE per node = 25 GB/s per GPU (table title); NVLink assumed. "
                if inter
                else "Inter-node network not stated (blank); NVLink assumed. "
            )
        )
        out.append(r)
    return _finish(out, "llm-foundry-2024", src, "fsdp", None)


def fms_fsdp() -> list[dict]:
    src = "IBM foundation-model-stack/fms-fsdp README throughput benchmarks (2024-05)"
    cite = (
        "foundation-model-stack/fms-fsdp README.md at ed74fd5 (2024-05-09), 'Training throughput benchmarks' "
        "table; https://github.com/foundation-model-stack/fms-fsdp/blob/ed74fd5/README.md"
    )
    table = [  # model, sharding, AC, A100 tokens/s/GPU (128 GPUs), H100 tokens/s/GPU (96 GPUs)
        ("Llama-2-7B", "HSDP", "No AC", 4550, 9600),
        ("Llama-2-13B", "FSDP", "Selective AC", 2150, 4850),
        ("FMS-34B", "FSDP", "Selective AC", 820, 1830),
        ("Llama-2-70B", "FSDP", "Selective AC", 410, 890),
    ]
    out = []
    for model, shard, ac, a100, h100 in table:
        for gpu, gpus, tps, net in (("A100-80GB", 128, a100, "400Gbps"), ("H100-SXM", 96, h100, "800 Gbps")):
            r = row(
                model, 4096, gpus, gpu=gpu, gpus_per_node=8, tp=1, pp=1, dp=gpus, cp=1, zero=3, sequence_parallel=0,
                recompute="none" if ac == "No AC" else "", global_batch=2 * gpus, micro_batch=2, precision="bf16",
            )  # fmt: skip
            if shard == "HSDP":  # ZeRO-3 inside each node, replicas across nodes (flopwise.layout's dp_shard)
                r["dp_shard"] = 8
            from_tokens(r, tps, f"{tps} tokens/s/GPU ({gpu.split('-')[0]}, {gpus} GPUs, {shard}, {ac})")
            r["notes"] = (
                f"PyTorch FSDP1 ({shard}; HSDP = shard inside a node, replicate across nodes, written as zero=3 "
                "with dp_shard=8), "
                "torch.compile, SDPA flash attention, batch 2 per GPU, seq 4096 (train_config default), no "
                "gradient accumulation assumed. "
                + (
                    "'Selective AC' in fms-fsdp checkpoints a fraction p of the blocks, p not stated: recompute left blank. "
                    if ac != "No AC"
                    else ""
                )
                + f"The table gives the network only as '{net}' for the whole cluster (per node, most likely: "
                "IBM Vela), so inter_node_GBps_per_gpu is blank; intra-node link not stated."
            )
            out.append(r)
    return _finish(out, "fms-fsdp-2024-05", src, "fsdp", cite)


def kempner() -> list[dict]:
    src = "KempnerForge benchmarks (FSDP2 + TP, H200, 4 GPUs per node, 2026)"
    mfu_url = "https://github.com/KempnerInstitute/KempnerForge/blob/main/benchmarks/mfu_scaling/mfu_scaling_2026-04-05.md"
    ws_url = "https://github.com/KempnerInstitute/KempnerForge/blob/main/benchmarks/weak_scaling_160gpu/README.md"
    out = []
    table = [  # model, gpus, tp, fsdp, micro batch, grad accum, printed step s, tok/s (total), cite
        ("Llama-3-8B", 1, 1, 1, 4, 2, 3.13, "10,471", f"mfu_scaling_2026-04-05.md row 1; {mfu_url}"),
        ("Llama-3-8B", 4, 1, 4, 4, 2, 3.36, "38,983", f"mfu_scaling_2026-04-05.md row 4; {mfu_url}"),
        ("Kempner-13B", 8, 1, 8, 4, 4, 14.81, "35,405", f"mfu_scaling_2026-04-05.md row 8; {mfu_url}"),
        ("Kempner-13B", 32, 4, 8, 4, 4, 4.75, "110,373", f"weak_scaling_160gpu/README.md Results; {ws_url}"),
        ("Kempner-13B", 160, 4, 40, 4, 4, 4.91, "534,644", f"weak_scaling_160gpu/README.md Results; {ws_url}"),
        ("Llama-3-70B", 32, 4, 8, 2, 4, 14.03, "18,688", f"weak_scaling_160gpu/README.md Results; {ws_url}"),
        ("Llama-3-70B", 160, 4, 40, 2, 4, 15.32, "85,571", f"weak_scaling_160gpu/README.md Results; {ws_url}"),
    ]
    for model, gpus, tp, fsdp, mbs, ga, step, tok, cite in table:
        r = row(
            model, 4096, gpus, gpu="H200", gpus_per_node=4, tp=tp, pp=1, dp=fsdp, cp=1, zero=3 if fsdp > 1 else 0,
            recompute="full", global_batch=mbs * ga * fsdp, micro_batch=mbs, precision="bf16",
        )  # fmt: skip
        printed(r, step, f"{step} s/step ({tok} tok/s)")
        r["source_id"] = "kempnerforge-mfu-2026-04" if cite.startswith("mfu") else "kempnerforge-weak-2026-06"
        r["citation"] = f"KempnerInstitute/KempnerForge benchmarks/{cite}"
        r["notes"] = (
            "KempnerForge (torch FSDP2 + TP), bf16 mixed precision, full activation checkpointing, fused AdamW, "
            f"batch {mbs} x grad accum {ga} per data-parallel rank, seq 4096, "
            + ("compile off (row 8 note). " if gpus == 8 else "torch.compile on. ")
            + "4 x H200 141 GB per node over NVLink (link rate not stated: blank), InfiniBand between nodes (rate not "
            "stated: blank). sequence_parallel with TP not stated (blank)."
            + (
                " 13B shape: dim 5120, 40 layers, 40 heads, 8 kv heads, ffn 17,920 (report's table)."
                if "13B" in model
                else ""
            )
        )
        out.append(r)
    return _finish(out, "", src, "fsdp", None)


def bloom() -> list[dict]:
    src = "BigScience BLOOM-176B training (Megatron-DeepSpeed, 384 A100-80GB)"
    cite = (
        "bigscience-workshop/bigscience train/tr11-176B-ml/README.md (log line at iteration 85376: 'elapsed time "
        "per iteration (s): 104.70 ... TFLOPs: 149.77') and tr11-176B-ml.slurm (TP 4, PP 12, MBS 2, GBS 2048, "
        "--checkpoint-activations, --bf16); https://github.com/bigscience-workshop/bigscience/blob/master/train/"
        "tr11-176B-ml/README.md"
    )
    r = row(
        "BLOOM-176B", 2048, 384, gpu="A100-80GB", gpus_per_node=8, inter_node_GBps_per_gpu=6.25, tp=4, pp=12, dp=8,
        vpp=1, cp=1, zero=1, sequence_parallel=0, recompute="full", global_batch=2048, micro_batch=2,
        precision="bf16",
    )  # fmt: skip
    printed(r, 104.70, "104.70 s/iteration (149.77 hardware TFLOP/s/GPU)")
    r["notes"] = (
        "Printed iteration time at full batch (GBS 2048). DeepSpeed BF16_Optimizer implements its own ZeRO-1 "
        "(zero=1). Jean Zay nodes: 8 A100-80GB, 'NVLink 4 inter-gpu connects' (topology not stated: intra blank), "
        "4 Omni-Path links per node = 4 x 100 Gb/s / 8 GPUs = 6.25 GB/s per GPU. Megatron-era kernels (fused "
        "softmax, no flash attention) in DeepSpeed's pipeline engine: software=deepspeed. It has no "
        "interleaving: "
        "vpp=1."
    )
    return _finish([r], "bloom-2022", src, "deepspeed", cite)


def mt_nlg() -> list[dict]:
    src = "Smith et al. 2022, Megatron-Turing NLG 530B (Megatron-DeepSpeed on Selene)"
    cite = (
        "Smith et al. 2022, 'Using DeepSpeed and Megatron to Train Megatron-Turing NLG 530B', arXiv 2201.11990, "
        "section 2.4 (iteration time 60.1/50.2/44.4 s at 280/350/420 DGX A100 nodes, batch 1920; 126/121/113 "
        "TFLOP/s/GPU), as quoted in cli99/llm-analysis examples/megatron-turing-nlg/README.md"
    )
    out = []
    for nodes, step, tflops in ((280, 60.1, 126), (350, 50.2, 121), (420, 44.4, 113)):
        gpus = 8 * nodes
        r = row(
            "MT-NLG-530B", 2048, gpus, gpu="A100-80GB", gpus_per_node=8, intra_node_GBps=300,
            inter_node_GBps_per_gpu=25, tp=8, pp=35, dp=gpus // 280, cp=1, sequence_parallel=0, global_batch=1920,
        )  # fmt: skip
        printed(r, step, f"{step} s/iteration ({tflops} TFLOP/s/GPU)")
        r["notes"] = (
            "Printed latency per iteration. TP 8 within a DGX A100 (NVSwitch), PP 35 (3 layers per stage), DP = "
            "nodes / 35. Selene: 8 x 200 Gb/s HDR InfiniBand per node. Not stated in the quoted text (blank): "
            "micro-batch, recompute (activation checkpointing is needed to fit 35 in-flight micro-batches), ZeRO "
            "stage, precision (mixed precision; bf16 assumed by the planner). software=deepspeed (2021 Megatron "
            "kernels, no flash attention, DeepSpeed's pipeline engine)."
        )
        out.append(r)
    return _finish(out, "mt-nlg-2022", src, "deepspeed", cite)


def nemotron4_report() -> list[dict]:
    src = "NVIDIA 2024, Nemotron-4 340B technical report"
    cite = (
        "Nemotron-4 340B Technical Report, arXiv 2406.11704, Table 2 (6144 GPUs, batch 2304, iteration time 8.0 s, "
        "MFU ~41%), as quoted at https://aiportalx.com/nvidia/nemotron-4-340b"
    )
    r = row(
        "Nemotron-4-340B", 4096, 6144, **DGX_H100, tp=8, pp=12, dp=64, cp=1, global_batch=2304, precision="bf16",
    )  # fmt: skip
    printed(r, 8.0, "8.0 s/iteration (MFU 41.0%)")
    r["notes"] = (
        "Printed iteration time of the 6144-GPU stage. TP 8 x PP 12 (interleaved; virtual stages not stated: vpp "
        "blank) x DP 64 from the report's section 3 text (not re-read here: treat as recalled). Not stated "
        "(blank): micro-batch, ZeRO stage (Megatron-Core's distributed optimizer likely), sequence parallelism, "
        "recompute. Trained in BF16. Stack nemo: NVIDIA's own production run on Megatron-Core, costed as NVIDIA's "
        "tuned recipes run it (overlapped gradient reduction, TP overlap; software te), not as Megatron-LM's "
        "defaults (megatron-lm). " + DGX_H100_NOTE
    )
    return _finish([r], "nemotron4-report-2024", src, "nemo", cite)


def llama3_paper() -> list[dict]:
    src = "Llama Team 2024, The Llama 3 Herd of Models (405B pre-training on H100)"
    cite = (
        "Llama Team 2024, arXiv 2407.21783, Table 4 (GPUs, TP, CP, PP, DP, seq, batch/DP, tokens/batch, TFLOP/s/GPU, "
        "BF16 MFU); the same rows appear on P. Balaji's SC'24 slide quoted at https://glennklockwood.com/garden/"
        "llama-3.1 (8192 GPUs: TP 8, CP 1, PP 16, 16M tokens, 430 TFLOP/s; 16384: 400 TFLOP/s)"
    )
    layers, h, heads, kv, ffn, _, vocab = SHAPES["Llama-3.1-405B"]
    d = h // heads
    matmul = layers * (h * heads * d * 2 + 2 * h * kv * d + 3 * h * ffn) + h * vocab
    seq = 8192
    flops_per_token = 6 * matmul + 12 * layers * h * seq  # PaLM (Chowdhery et al. 2022, appendix B)
    out = []
    for gpus, dp, tflops, mfu in ((8192, 64, 430, "43%"), (16384, 128, 400, "41%")):
        r = row(
            "Llama-3.1-405B", seq, gpus, gpu="H100-SXM", gpus_per_node=8, intra_node_GBps=450,
            inter_node_GBps_per_gpu=50, tp=8, pp=16, dp=dp, cp=1, sequence_parallel=1, global_batch=2048,
            precision="bf16",
        )  # fmt: skip
        step = 2048 * seq * flops_per_token / (gpus * tflops * 1e12)
        r["measured_step_s"] = _fmt(step)
        r["published_value"] = f"{tflops} TFLOP/s/GPU (BF16 MFU {mfu}), 16M tokens/batch"
        r["derived_from"] = "TFLOP/s/GPU: step = 2048 x 8192 x (6 x matmul params + 12 l h s) / (gpus x TFLOP/s)"
        r["notes"] = (
            "The paper does not give its FLOP formula; PaLM's 6N + 12 l h s is assumed (attention counted over the "
            "full sequence; counting only the causal half would lower the FLOPs and the step by ~4%). 16M tokens = "
            "2048 sequences of 8192. Meta's stack: FSDP-style sharding with TP/PP/CP (stage, micro-batch, recompute "
            "and virtual stages not stated: blank). Grand Teton H100 80 GB HBM3 700 W, NVLink in the node, 400 Gb/s "
            "RoCE per GPU. The 131072-token CP 16 row (380 TFLOP/s) is left out: its step depends 2x on the unknown "
            "attention accounting."
        )
        out.append(r)
    return _finish(out, "llama3-paper-2024", src, "other", cite)


def software_profile(stack: str, notes: str) -> str:
    """The planner's software profile (flopwise.plan.spec.SOFTWARE) for a row, from its stack and what its notes
    say about compilation (issue 14): the library's one rule (flopwise.plan.software_rule), which `flopwise plan
    validate` also applies to rows without a `software` column."""
    return software_for_stack(stack, notes)


def _finish(rows, source_id, source, stack, citation, software=None) -> list[dict]:
    for r in rows:
        r["source"] = source
        r.setdefault("source_id", "")
        r["source_id"] = r["source_id"] or source_id
        r["stack"] = stack
        r["software"] = software or software_profile(stack, r.get("notes", ""))
        if citation:
            r["citation"] = citation
    return rows


SOURCES = (
    nemo_perf_2407,
    megatron_bridge_2511,
    dgxc_2411,
    torchtitan_a100_2404,
    torchtitan_h100_2408,
    torchtitan_h100_2412,
    torchtitan_asynctp_2506,
    torchtitan_h200_trainy,
    llm_foundry,
    fms_fsdp,
    kempner,
    bloom,
    mt_nlg,
    nemotron4_report,
    llama3_paper,
)


def all_rows() -> list[dict]:
    return [r for source in SOURCES for r in source()]


def render(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r[k] for k in COLUMNS})
    return buffer.getvalue()


def outputs() -> dict[Path, str]:
    rows = all_rows()
    return {
        HERE / "fit.csv": render([r for r in rows if r["source_id"] not in HOLDOUT_SOURCES]),
        HERE / "holdout.csv": render([r for r in rows if r["source_id"] in HOLDOUT_SOURCES]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if fit.csv / holdout.csv are out of date")
    args = parser.parse_args()
    stale = []
    for path, text in outputs().items():
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.name)
            continue
        tmp = path.with_suffix(".csv.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        print(f"wrote {path} ({text.count(chr(10)) - 1} rows)")
    if stale:
        print(f"stale: {', '.join(stale)} (run benchmarks/planner_calibration/build.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
