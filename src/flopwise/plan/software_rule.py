"""Which trainer ran a published run: the software profile (plan.spec.SOFTWARE) that costs a CSV row (issue 14).

The step time of the same layout differs by stack (fused kernels, attention kernel, which collectives overlap), so
a row is costed with its stack's profile. A calibration row names it in its `software` column or its `stack`
column; a CSV in the published format (shared/published/README.md) has neither, so the row's own text (source,
derived_from, published_value, notes, citation) is searched for the name of a stack; a row that names none is
costed as the stack family its layout implies. One rule for all three, used by `flopwise plan validate` and by
the calibration set's builder (benchmarks/planner_calibration/build.py).
"""

from __future__ import annotations

from flopwise.plan.spec import SOFTWARE

# Words that name a stack, searched in this order (first match wins): Megatron-DeepSpeed, BLOOM and MT-NLG run
# DeepSpeed's engine; NeMo (but its AutoModel), Megatron-Core / Megatron-Bridge and NVIDIA's benchmark suites run
# Transformer Engine; then the PyTorch FSDP trainers; plain "Megatron" last, since the other Megatron-based names contain it.
STACK_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("deepspeed", ("deepspeed", "bloom", "mt-nlg", "megatron-turing", "bigscience")),
    ("fsdp", ("automodel",)),  # NeMo AutoModel: PyTorch FSDP2, not Megatron-Core
    ("nemo", ("nemo", "megatron-core", "megatron core", "mcore", "megatron-bridge", "transformer engine",
              "transformerengine", "dgxc", "dgx cloud", "mlperf", "nemotron")),
    ("fsdp", ("torchtitan", "fsdp", "llm-foundry", "composer", "mosaicml", "olmo", "kempnerforge", "lightning",
              "hugging face", "huggingface")),
    ("megatron", ("megatron", "narayanan", "korthikanti", "shoeybi")),
    ("flopwise", ("flopwise",)),
)
# A source that is one of the Megatron-LM papers (2019-2022) ran unfused softmax + dropout without overlapped
# gradient reduction (the 'megatron' profile); later Megatron-LM runs use Transformer Engine (Megatron-Core).
LEGACY_MEGATRON_WORDS = ("narayanan", "korthikanti", "shoeybi")
# the text columns a row may carry, in the published format or the calibration set's
TEXT_COLUMNS = ("source", "stack", "derived_from", "published_value", "notes", "citation")


def software_for_stack(stack: str, text: str = "") -> str:
    """The profile of a named stack (Megatron: the Transformer Engine era's); `text` (the row's notes) says
    whether an FSDP stack compiled its model."""
    text = text.lower()
    if stack in ("nemo", "megatron", "other"):
        return "te"
    if stack in SOFTWARE:  # a profile's own name (deepspeed, te, flopwise, ...)
        return stack
    return "torch-compile" if "compile" in text and "eager" not in text else "torch-eager"


def named_stack(text: str) -> tuple[str, str] | None:
    """(stack, the word that names it) for the first stack `text` names, else None."""
    text = text.lower()
    for stack, words in STACK_WORDS:
        for word in words:
            if word in text:
                return stack, word
    return None


def infer_software(row: dict, *, tp: int = 0, pp: int = 0, cp: int = 0, vpp: int = 0, zero: int = 0,
                   precision: str = "bf16") -> tuple[str, str]:
    """(profile, why) for a CSV row: its `software` cell, else its `stack` cell, else a stack its text names, else
    the family its layout implies (the layout cells as parsed; 0: blank). `why` is empty when the row said it."""
    software = (row.get("software") or "").strip()
    if software:
        return software, ""
    text = " ".join((row.get(k) or "") for k in TEXT_COLUMNS)
    stack = (row.get("stack") or "").strip().lower()
    if stack:
        return software_for_stack(stack, text), ""
    source = (row.get("source") or "").lower()
    if any(word in source for word in LEGACY_MEGATRON_WORDS):
        return "megatron", "software megatron: the source is a Megatron-LM paper (2019-2022 kernels)"
    named = named_stack(text)
    if named is not None:
        profile = software_for_stack(named[0], text)
        return profile, f"software {profile}: inferred from {named[1]!r} in the row's text"
    # Nothing named: sharded data parallelism (ZeRO-2/3, FSDP) is a PyTorch-native trainer's layout, whatever else
    # it combines; context or interleaved pipeline parallelism, FP8, TP and PP are otherwise Megatron-family
    # layouts (NeMo / Megatron-Core with Transformer Engine); plain data parallelism is costed as a PyTorch-native
    # trainer too (flopwise's own costs, without its trainer's refusals)
    if zero <= 1 and (cp > 1 or vpp > 1 or precision == "fp8" or tp > 1 or pp > 1):
        return "te", "software te: no stack named; the layout is Megatron-style (Megatron-Core / NeMo)"
    return "torch-compile", "software torch-compile: no stack named; the layout is PyTorch-native (FSDP / DDP)"
