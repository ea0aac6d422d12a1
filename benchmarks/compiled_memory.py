"""What blocks under torch.compile keep for the backward, against eager and against the planner (item 43, issue 14).

For each model, one forward and loss of flopwise's Transformer on CPU, eager and with each block compiled as the
trainer compiles it (`block.compile`), counting the bytes autograd saves once per storage (parameters and buffers
excluded), beside the planner's count of the same tensors (memory.layer_activation_bytes through the cost model's
stage memory, logits included). Backends: `inductor` (what train.compile runs) and `aot_eager_decomp_partition`
(Inductor's decompositions and partitioner without code generation, what the test uses).

    python benchmarks/compiled_memory.py [--dtype fp32|bf16] [--backend inductor]
"""

from __future__ import annotations

import argparse
import platform

import torch
import torch.nn.functional as F

from flopwise.hardware import cpu_accelerator
from flopwise.layout import Layout
from flopwise.models import Transformer
from flopwise.models.config import ModelConfig
from flopwise.plan.cost import CostModel
from flopwise.plan.spec import Cluster, Training
from flopwise.train.memory_probe import saved_tensor_bytes

MODELS = {
    "llama-swiglu (h 128)": ModelConfig(1024, 3, 128, 4, 4, 352, 128, lfa=False),
    "llama-gqa (h 512, 8B's proportions)": ModelConfig(2048, 2, 512, 8, 2, 1792, 256, lfa=False),
    "lfa-swiglu-gqa (flopwise's default block)": ModelConfig(512, 2, 64, 4, 2, 128, 64, lfa=True),
    "gelu": ModelConfig(768, 2, 96, 6, 6, 384, 96, lfa=False, mlp="gelu"),
}
BATCH = 2


def saved_bytes(cfg: ModelConfig, dtype: torch.dtype, backend: str | None) -> int:
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = Transformer(cfg).to(dtype)
    if backend:
        for block in model.layers.values():
            block.compile(backend=backend, dynamic=False)
    tokens = torch.randint(0, cfg.vocab_size, (BATCH, cfg.seq_len))
    with saved_tensor_bytes([*model.parameters(), *model.buffers()]) as saved:
        logits = model(tokens)
        loss = F.cross_entropy(logits.float().view(-1, cfg.vocab_size), tokens.view(-1))
    loss.backward()
    return saved["total"]


def planned_bytes(cfg: ModelConfig, precision: str, compiled: bool) -> float:
    cm = CostModel(cfg, Cluster(cpu_accelerator(), 1, 1), Training(BATCH, precision=precision, compiled=compiled))
    stage = cm.stage_memory(Layout(micro_batch=BATCH), 0, cfg.layers, 1)
    return stage["activations"] + stage["logits"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--backend", action="append", help="compile backends (default: both)")
    args = parser.parse_args()
    backends = args.backend or ["inductor", "aot_eager_decomp_partition"]
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.dtype}, batch {BATCH}\n")
    print("Whole model (saved bytes; the planned figure's error in brackets), and one block by difference with a model one\n"
          "layer shorter (the embedding, final norm and loss cancel):\n")
    print("| model | eager saved | planned eager | " + " | ".join(f"compiled ({b})" for b in backends)
          + " | planned compiled | one block compiled / eager | one block planned compiled, error |")
    print("|---|---:|---:|" + "---:|" * len(backends) + "---:|---:|---:|")
    for name, cfg in MODELS.items():
        eager = saved_bytes(cfg, dtype, None)
        compiled = [saved_bytes(cfg, dtype, b) for b in backends]
        p_eager, p_compiled = planned_bytes(cfg, args.dtype, False), planned_bytes(cfg, args.dtype, True)
        shorter = cfg.replace(layers=cfg.layers - 1)
        block_eager = eager - saved_bytes(shorter, dtype, None)
        block = compiled[0] - saved_bytes(shorter, dtype, backends[0])
        p_block = p_compiled - planned_bytes(shorter, args.dtype, True)
        cells = " | ".join(f"{c:,} ({p_compiled / c - 1:+.1%})" for c in compiled)
        print(f"| {name} | {eager:,} | {p_eager:,.0f} ({p_eager / eager - 1:+.1%}) | {cells} | {p_compiled:,.0f} "
              f"| {block / block_eager:.3f} | {p_block:,.0f} ({p_block / block - 1:+.1%}) |")


if __name__ == "__main__":
    main()
