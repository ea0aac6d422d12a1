"""Which trainer ran a published run: the software profile (plan.spec.SOFTWARE) that costs a CSV row (issue 14).

The step time of the same layout differs by stack (fused kernels, attention kernel, which collectives overlap), so
a row is costed with its stack's profile. A calibration row names it in its `software` column or its `stack`
column; a CSV in the published format (shared/published/README.md) has neither, so the row's own text is searched
for the name of a stack (its `source` first, then derived_from, published_value, notes, citation); a row that
names none is costed as the stack family its layout implies. One rule for all three, used by `flopwise plan
validate` and by the calibration set's builder (benchmarks/planner_calibration/build.py), which labels rows by their
stack (`software_for_stack`). `plan validate` adds one fact of the GPU: a Megatron-family row on a GPU without
FlashAttention-2 (hardware.Accelerator.flash_attention) is costed with Megatron-LM's legacy kernels.
"""

from __future__ import annotations

import re

from flopwise.errors import DataError
from flopwise.hardware import Accelerator
from flopwise.plan.spec import GEMM_FORMATS, LOW_PRECISIONS, SOFTWARE

# The stacks a `stack` cell names (the calibration set's vocabulary) besides the profiles' own names.
STACKS = ("nemo", "megatron", "other", "deepspeed", "fsdp", "torchtitan")
# Words that name a stack, matched as whole words; in a text the earliest match wins, the longest at one place
# ("Megatron-DeepSpeed" is DeepSpeed's engine, not Megatron). BLOOM, MT-NLG and BigScience ran Megatron-DeepSpeed,
# and GPT-NeoX builds on DeepSpeed's pipeline engine; NeMo, Megatron-Core / Megatron-Bridge and NVIDIA's benchmark
# suites run Transformer Engine, but NeMo AutoModel is PyTorch FSDP2; InternEvo (fused kernels, FlashAttention, its
# own hybrid ZeRO) is costed as the fused stacks are ('other'); metaseq is fairscale FSDP; the Megatron-LM papers'
# authors are matched on the source alone (LEGACY_MEGATRON_WORDS).
STACK_WORDS: dict[str, str] = {
    **dict.fromkeys(("deepspeed", "megatron-deepspeed", "bloom", "bloom-176b", "mt-nlg", "megatron-turing",
                     "bigscience", "gpt-neox"), "deepspeed"),
    "internevo": "other",
    "metaseq": "fsdp",
    **dict.fromkeys(("nemo", "megatron-core", "megatron core", "mcore", "megatron-bridge", "transformer engine",
                     "transformerengine", "dgxc", "dgx cloud", "mlperf", "nemotron"), "nemo"),
    **dict.fromkeys(("nemo automodel", "automodel", "torchtitan", "fsdp", "fsdp2", "llm-foundry", "composer",
                     "mosaicml", "olmo", "olmo-core", "kempnerforge", "pytorch lightning", "lightning fabric",
                     "litgpt", "lit-gpt", "hf accelerate", "hugging face accelerate", "colossalai", "colossal-ai"),
                    "fsdp"),
    "megatron": "megatron",
    "megatron-lm": "megatron",
    "flopwise": "flopwise",
}
# What a row is read as when it names no stack (its layout's family), and the stacks whose runs on a GPU without
# FlashAttention used Megatron-LM's legacy kernels (infer_software): NVIDIA's and Megatron-LM's own, named or guessed
# from a Megatron-style layout; not 'other' (InternEvo and the like have kernels of their own)
LAYOUT_GUESS = "layout"
MEGATRON_FAMILY = frozenset({"nemo", "megatron", "te", "megatron-lm", LAYOUT_GUESS})
# A source that is one of the Megatron-LM papers (2019-2022) ran unfused softmax + dropout without overlapped
# gradient reduction (the 'megatron' profile); later Megatron-LM runs use Transformer Engine (Megatron-Core).
LEGACY_MEGATRON_WORDS = ("narayanan", "korthikanti", "shoeybi")
# A DeepSpeed run of a Hugging Face transformers model (not Megatron-DeepSpeed's GPT): the text names the library or
# a model from it ("Hugging Face transformers", "HF model", "HuggingFace LLaMA", LlamaForCausalLM, GPT2LMHeadModel),
# not merely Hugging Face ("tokenizer from Hugging Face", "weights converted from HF" do not count)
HF_MODEL = re.compile(
    r"(?<![a-z0-9])(?:(?:hugging ?face|hf)(?:'s)?[\s-]+(?:transformers|model|llama|gpt|version)|transformers library|"
    r"transformers \d+\.\d+|[a-z0-9]+(?:forcausallm|lmheadmodel))(?![a-z0-9])",
    re.IGNORECASE,
)
# What a row's text says about its attention kernel, where that can differ from its stack's profile: Megatron-LM
# without --use-flash-attn, Hugging Face models' eager attention (the transformers default before SDPA), DeepSpeed
# runs with flash attention. A mention is negated by a word before it ("no flash attention", "not using SDPA",
# "--no-flash-attn", "without --use-flash-attn") or a state after it ("FlashAttention disabled", "use_flash_attn=False").
_FLASH = r"(?:--use-flash-attn[-a-z0-9]*|flash[-_ ]?attn[-_a-z0-9]*|flash[-_ ]?attention(?:[-_ ]?\d)?|sdpa)"
_NEGATED = re.compile(
    rf"(?<![a-z0-9])(?:(?:no|without|not|never)[\s-]+(?:use[ds]?[\s-]+|using[\s-]+)?{_FLASH}|"
    rf"{_FLASH}[\s:=_'\"-]{{0,4}}(?:was |is )?(?:false|disabled|off|not used|not set|not enabled|unavailable)|"
    r"eager\s+(?:pytorch\s+)?attention|unfused attention|attn_implementation\W+eager)",
    re.IGNORECASE,
)
_MENTION = re.compile(rf"(?<![a-z0-9]){_FLASH}", re.IGNORECASE)
# the text columns a row may carry, in the order they are searched for a stack's name
TEXT_COLUMNS = ("source", "derived_from", "published_value", "notes", "citation")
# ... and for what it says about its attention kernel: the notes describe the run; a citation names documents (a
# flash-attention repository URL says nothing about the run's kernel)
ATTENTION_COLUMNS = ("notes", "source", "derived_from", "published_value")
_WORDS = re.compile(
    r"(?<![a-z0-9])(" + "|".join(re.escape(w) for w in sorted(STACK_WORDS, key=len, reverse=True)) + r")(?![a-z0-9])"
)


def software_for_stack(stack: str, text: str = "") -> str:
    """The profile of a named stack: NVIDIA's recipes (NeMo, dgxc, MLPerf) and Meta's Llama 3 stack 'te', Megatron-LM
    as its defaults run it 'megatron-lm', DeepSpeed on a Hugging Face model (`text` names the library)
    'deepspeed-hf', else Megatron-DeepSpeed. A PyTorch-native stack is costed eager unless `text` (the row's notes)
    says it compiled the model."""
    text = text.lower()
    if stack in ("nemo", "other"):
        return "te"
    if stack == "megatron":
        return "megatron-lm"
    if stack == "deepspeed" and HF_MODEL.search(text):
        return "deepspeed-hf"
    if stack in SOFTWARE:  # a profile's own name (deepspeed, te, flopwise, ...)
        return stack
    return "torch-compile" if "compile" in text and "eager" not in text else "torch-eager"


def named_stack(text: str) -> tuple[str, str] | None:
    """(stack, the word that names it) for the stack `text` names first, else None."""
    match = _WORDS.search(text.lower())
    return (STACK_WORDS[match.group(1)], match.group(1)) if match else None


def infer_software(row: dict, *, tp: int = 0, pp: int = 0, cp: int = 0, vpp: int = 0, zero: int = 0,
                   precision: str = "bf16", accelerator: Accelerator | None = None) -> tuple[str, str]:
    """(profile, why) for a CSV row: its `software` cell, else its `stack` cell, else a stack its text names, else
    the family its layout implies (the layout cells as parsed; 0: blank). `why` is empty when the row said it.
    A Megatron-family run on a GPU without FlashAttention-2 (`accelerator`, Accelerator.flash_attention False) ran
    Megatron-LM's legacy kernels: the 'megatron' profile."""
    software = (row.get("software") or "").strip().lower()
    if software:
        return software, ""
    profile, reason, stack = _inferred(row, tp=tp, pp=pp, cp=cp, vpp=vpp, zero=zero, precision=precision)
    if (accelerator is not None and not accelerator.flash_attention and stack in MEGATRON_FAMILY
            and profile in ("te", "megatron-lm")):
        return "megatron", (f"software megatron: {reason or 'a Megatron-family stack'}, on {accelerator.name}, which "
                            f"cannot run FlashAttention-2: Megatron-LM's legacy kernels")
    return profile, f"software {profile}: {reason}" if reason else ""


def _inferred(row: dict, *, tp: int, pp: int, cp: int, vpp: int, zero: int, precision: str) -> tuple[str, str, str]:
    """(profile, why it was inferred, empty where the row's stack cell names it; the stack it was read as: a STACKS
    name or a profile's, LAYOUT_GUESS for the layout's family)."""
    text = " ".join((row.get(k) or "") for k in TEXT_COLUMNS)
    stack = (row.get("stack") or "").strip().lower()
    if stack:
        if stack in STACKS or stack in SOFTWARE:
            return software_for_stack(stack, text), "", stack
        named = named_stack(stack)
        if named is None:
            raise DataError(f"stack {stack!r}: not a stack the planner knows ({', '.join(STACKS)}, or a profile: "
                            f"{', '.join(SOFTWARE)})")
        profile = software_for_stack(named[0], text)
        return profile, f"stack {stack!r} read as {named[0]}", named[0]
    source = (row.get("source") or "").lower()
    if any(word in source for word in LEGACY_MEGATRON_WORDS):
        return "megatron", "the source is a Megatron-LM paper (2019-2022 kernels)", "megatron"
    for column in TEXT_COLUMNS:
        named = named_stack(row.get(column) or "")
        if named is not None:
            profile = software_for_stack(named[0], text)
            return profile, f"inferred from {named[1]!r} in the row's {column}", named[0]
    # Nothing named: sharded data parallelism (ZeRO-2/3, FSDP) is a PyTorch-native trainer's layout, whatever else it
    # combines; context or interleaved pipeline parallelism, FP8, TP and PP are otherwise Megatron-family layouts
    # (Megatron-Core / NeMo with Transformer Engine); plain data parallelism is PyTorch-native too. With nothing
    # known about its kernels, a PyTorch-native row gets flopwise's own costs (fused elementwise work, as compiled),
    # as before this rule; a *named* PyTorch stack whose row does not say it compiled is costed eager, the
    # calibration set's convention (its notes say when a stack compiled).
    if precision in GEMM_FORMATS and GEMM_FORMATS[precision].axiswise:  # torchao's row-wise recipes: no TE profile
        return "torch-compile", f"no stack named; {precision} is a torchao recipe (PyTorch-native)", LAYOUT_GUESS
    if zero <= 1 and (cp > 1 or vpp > 1 or precision in LOW_PRECISIONS or tp > 1 or pp > 1):
        return "te", "no stack named; the layout is Megatron-style (Megatron-Core / NeMo)", LAYOUT_GUESS
    return "torch-compile", "no stack named; the layout is PyTorch-native (FSDP / DDP)", LAYOUT_GUESS


def attention_in_text(text: str) -> tuple[str, str] | None:
    """('flash' | 'unfused', the words that say it) for the attention kernel `text` names, else None: negated mentions
    only -> unfused, plain ones only -> flash, both (e.g. "SDPA, no flash-attn package") -> None (undecided)."""
    negated = list(_NEGATED.finditer(text))
    inside = [range(m.start(), m.end()) for m in negated]
    plain = [m for m in _MENTION.finditer(text) if not any(m.start() in span for span in inside)]
    if negated and not plain:
        return "unfused", negated[0].group(0)
    if plain and not negated:
        return "flash", plain[0].group(0)
    return None
