"""How far to trust a plan's step time: the planner's own out-of-sample error on published runs like it.

`track_record.json` beside this module holds the planner's errors on the published runs of
benchmarks/planner_calibration (fit rows out of fold under grouped cross-validation, every other row with the
constants fitted on the fit rows alone), grouped by GPU, software profile and model size; per profile the runs whose
steps had few micro-batches and no pipeline; the runs whose blocks are small enough to wait on kernel launches; and per
low precision (FP8, MXFP8, NVFP4, MXFP4) its runs. It is written by
`benchmarks/planner_track_record.py` with the constants it records; `plan.search` attaches the note of the closest
group with enough runs to every search, the precision's note to a search in a low precision whose runs lean one way,
and the few-micro-batch and small-block notes to each plan they concern, so a user reads the figure beside its
evidence. Runs whose source printed their peak memory per GPU give the same for the planned peak (`memory`).
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from importlib.resources import files

from flopwise.hardware import FROM_RUNS, Accelerator
from flopwise.plan.cost import DEFAULT_CONSTANTS
from flopwise.plan.experts import ep_nodes

# a group speaks for a plan only with this many runs behind it
MIN_RUNS = 5
# models below this many parameters form their own class: on Hopper they have been predicted too fast more often
SMALL_MODEL_PARAMS = 15e9
# a step of this many micro-batches or fewer pays its once-per-step work (the last gradient reduction and the first
# parameter gather, the optimizer, host synchronisation) over little compute: `te`-profile runs like that ran ~12%
# slower than predicted on the calibrated GPUs, those with more ~1% (benchmarks/planner_calibration/FINDINGS.md,
# section 18; ~11% since the profile's per-step host term, section 30; 3% since set 48 made the GB300, whose MLPerf
# runs at one micro-batch sit near their plans, a calibrated GPU, section 59). Pipelined runs are left out: their few
# micro-batches show up as a bubble the planner counts.
FEW_MICROBATCHES = 3
# ... and such a group speaks only where it leans one way by at least this much (median signed error): torch-compile's
# few-micro-batch runs (-3%) miss no more than its others
LEAN = 0.05
# a block whose planned forward takes under this long per micro-batch may wait on the host: a framework launches a
# block's tens of kernels (eager PyTorch, Transformer Engine's modules, DTensor) at tens of microseconds each, a
# millisecond or so, and the planner does not cost launches (FINDINGS.md section 31). CUDA graphs and whole-step
# compilation take that host time away, so the group holds such runs of every stack, the graphed ones too.
SMALL_BLOCK_S = 1e-3
SMALL_BLOCK_KEY = "block<1ms"
# ... and far below it: the three runs under 0.25 ms ran a median 53% slower than predicted (too few for a group)
TINY_BLOCK_S = 0.25e-3


# the runs whose source printed their peak memory per GPU, all of them and per software profile
MEMORY_KEY = "memory"
# the mixture-of-experts runs (benchmarks/planner_calibration/moe/), kept out of every dense group and line
MOE_KEY = "moe"
# ... and those whose expert-parallel group spans more than one node: their all-to-all crosses the network, the term on
# which the seen and the blind sets disagreed most (FINDINGS.md sections 71-72), so a plan like that quotes them too
EP_OVER_NODES_KEY = "moe-ep-over-nodes"
# Each line's "90% within X%" checked on runs gathered blind after such lines were first quoted, each set's test
# declared before it existed and scored once (benchmarks/planner_calibration/README.md): (runs within the 90% figure
# their plans quoted, runs, what they were held to). Below UNSEEN_SHARE a line gives that share in place of its own
# "90% within"; at or above it, beside it.
# The step-time lines: sets 35-39 (FINDINGS.md sections 43-51), 31 of 37; sets 41-42 had no run in a group of
# MIN_RUNS; set 43, 6 MXFP4 runs on MI355X against its `te` line's 9.8% (section 55), 0 of 6; set 45 none in a group;
# set 46, 4 GB300 runs against the `GB300|te` line's 14.9% (section 57), 3 of 4; set 47, 29 Megatron-Bridge and
# dgxc-benchmarking runs on GB300 / B300 against their groups' 13.8-19.0% (section 58), 20 of 29; set 48, 11 MLPerf
# runs on B300 / GB300 against their groups' 13.6-23.4% (section 59), 10 of 11; set 49, 6 more against 13.3-13.6%
# (section 60), 6 of 6; set 50, 38 Megatron-Bridge / NeMo table runs on GB200 / H100 / B200 (section 61), 29 of 38;
# set 51, 25 PyTorch-native runs (section 62), 24 of 25: 123 of 156.
STEP_UNSEEN = (123, 156, "")  # each run against its own group's line
# The memory lines: set 39, 6 torchtitan runs against the `torch-eager` line (FINDINGS.md section 51), 1 of 6; set 42,
# 4 torchtitan runs on MI300X against the `torch-compile` line and 2 Primus runs against the `megatron-lm` one
# (section 54), 6 of 6; set 47, one dgxc-benchmarking run on B300 against the pooled line (section 58), 1 of 1; set 51,
# 10 torchtitan / Thunder runs against the `torch-compile` and `torch-eager` lines (section 62), 8 of 10: 16 of 23.
MEMORY_UNSEEN = (16, 23, "")  # each run against its own profile's line
# The mixture-of-experts lines (first quoted with set 50's MoE runs, FINDINGS.md section 63): set 52, 21 MoE runs from
# torchtitan, NeMo AutoModel, Megatron and others against their MoE groups' lines (section 64), 15 of 21; its four
# GPT-OSS runs, costed once sliding windows were (section 65), 4 of 4; set 53, 4 ms-swift runs on A800 (section 67), 3
# of 4; set 54, 10 latent-attention runs (Moonlight, DeepSeek-V3) on H100, GB200, GB300 and MI355X (section 68), 10 of
# 10; set 55, 11 Megatron-Bridge verification-card runs on H100 and GB200, with the overlapped all-to-all adopted on it
# (section 69), 7 of 11 (5 of 11 without); set 56, 15 Pai-Megatron-Patch runs on H800 (against the pooled MoE line,
# H800 having no group) and 5 Megatron-Bridge runs on B200 and GB300 (section 71), 18 of 20; set 57, 22 AWS
# Megatron-Bridge runs of DeepSeek-V3 and Kimi-K2 on 128-256 B300 over EFA (section 72), 17 of 22: 74 of 92, a share
# just above UNSEEN_SHARE.
MOE_UNSEEN = (74, 92, "")
UNSEEN_SHARE = 0.8


def _spread(g: dict, unseen: tuple[int, int, str]) -> str:
    """A group's "90% within X%, worst Y%", with what the blind check (`unseen`) found of such figures."""
    within, of, held_to = unseen
    if not of:
        return f"90% within {100 * g['p90']:.1f}%, worst {100 * g['max']:.1f}%"
    check = (f"of {of} runs gathered blind after these lines were first quoted, {within} lay within the 90% figure "
             f"their plans quoted" + (f", {held_to}" if held_to else ""))
    if within >= UNSEEN_SHARE * of:
        return f"90% within {100 * g['p90']:.1f}% ({check}), worst {100 * g['max']:.1f}%"
    return f"worst {100 * g['max']:.1f}%; {check}"


def memory_key(software: str) -> str:
    return f"{MEMORY_KEY}|{software}"


def size_class(params: float) -> str:
    return "<15B" if params < SMALL_MODEL_PARAMS else ">=15B"


def group_keys(gpu: str, software: str, params: float, moe: bool = False) -> list[tuple[str, str]]:
    """(key, label) from the most specific group to the broadest; the JSON uses the same keys. Mixture-of-experts runs
    (`moe`) have groups of their own (MOE_KEY): a dense run's error says nothing of the routing, the all-to-all and the
    grouped expert GEMMs, and the few MoE runs are not split by model size."""
    if moe:
        return [(f"{MOE_KEY}|{gpu}|{software}", f"mixture-of-experts runs on {gpu}, the `{software}` profile"),
                (f"{MOE_KEY}|{gpu}", f"mixture-of-experts runs on {gpu}, all stacks"),
                (MOE_KEY, "mixture-of-experts runs, all GPUs and stacks")]
    size = size_class(params)
    return [
        (f"{gpu}|{software}|{size}", f"{gpu}, the `{software}` profile, {size} models"),
        (f"{gpu}|{software}", f"{gpu}, the `{software}` profile"),
        (f"{gpu}|*|{size}", f"{gpu}, all stacks, {size} models"),
        (f"{gpu}", f"{gpu}, all stacks"),
    ]


def few_microbatches(gpu: str, microbatches: int, pp: int) -> bool:
    """Whether a run or plan belongs with the few-micro-batch runs: at most FEW_MICROBATCHES per step, no pipeline,
    on a GPU whose constants rest on published runs (hardware.FROM_RUNS: V100 runs of 2020-21 stacks would speak for
    an H100 plan; a datasheet GPU's plans already say their constants are assumptions)."""
    return microbatches <= FEW_MICROBATCHES and pp == 1 and gpu in FROM_RUNS


def small_block(accelerator: Accelerator, block_forward_s: float) -> bool:
    """Whether a run or plan on a GPU (a catalogue part or one an accelerator file defines; not a measured CPU, whose
    plans compare busy time) has blocks small enough that launching their kernels may take longer than running them
    (SMALL_BLOCK_S)."""
    return not accelerator.measured and block_forward_s < SMALL_BLOCK_S


def microbatch_key(software: str) -> str:
    """The group of one software profile's runs for which few_microbatches holds."""
    return f"{software}|m<={FEW_MICROBATCHES}"


def precision_key(precision: str) -> str:
    """The group of the runs trained in one low precision (fp8, mxfp8, nvfp4, mxfp4, ...)."""
    return f"precision|{precision}"


def _lean(g: dict) -> str:
    """'ran a median X% slower (faster) than predicted (median error, worst)' for a group that leans one way."""
    signed = g["signed_median"]
    return (f"ran a median {100 * abs(signed):.1f}% {'slower' if signed < 0 else 'faster'} than predicted (median "
            f"error {100 * g['median']:.1f}%, worst {100 * g['max']:.1f}%)")


def _leaning(key: str, record: dict | None) -> dict | None:
    """The group under `key` where it has MIN_RUNS and leans LEAN or more either way, else None."""
    record = load() if record is None else record
    g = record.get("groups", {}).get(key, {})
    return g if g.get("n", 0) >= MIN_RUNS and abs(g.get("signed_median", 0.0)) >= LEAN else None


@cache
def load() -> dict:
    """The recorded track record ({} where the file is missing or unreadable: a plan then carries no note rather
    than failing over a missing figure)."""
    try:
        return json.loads(files("flopwise.plan").joinpath("track_record.json").read_text())
    except (OSError, ValueError):
        return {}


def current(record: dict) -> bool:
    """Whether the record was made with the constants the planner has now."""
    return record.get("constants") == dataclasses.asdict(DEFAULT_CONSTANTS)


def quoted_group(gpu: str, software: str, params: float, record: dict, moe: bool = False
                 ) -> tuple[str, str, dict] | None:
    """(key, label, group) of the line a plan like this quotes: the most specific of its groups (group_keys) with
    MIN_RUNS runs in `record`; None where none has."""
    groups = record.get("groups", {})
    return next(((key, label, groups[key]) for key, label in group_keys(gpu, software, params, moe)
                 if groups.get(key, {}).get("n", 0) >= MIN_RUNS), None)


def note(gpu: str, software: str, params: float, record: dict | None = None,
         unseen: tuple[int, int, str] | None = None, moe: bool = False) -> str | None:
    """One line on how well published runs like this plan (a mixture of experts: `moe`) were predicted, or None where
    no group has MIN_RUNS; with what the blind check of such lines (`unseen`; None: STEP_UNSEEN, or MOE_UNSEEN) found."""
    record = load() if record is None else record
    unseen = unseen or (MOE_UNSEEN if moe else STEP_UNSEEN)
    found = quoted_group(gpu, software, params, record, moe)
    if found is None:
        return None
    _, label, g = found
    too_fast = round(100 * g["too_fast"] / g["n"])
    text = (f"track record: {g['n']} published runs like this ({label}), none of them fitted to, were predicted with "
            f"median error {100 * g['median']:.1f}%, {_spread(g, unseen)}; {too_fast}% ran slower than predicted "
            f"(benchmarks/planner_calibration)")
    if software == "flopwise":
        text += ("; no published run uses flopwise's trainer: these are other stacks' runs on this GPU, "
                 "and `flopwise plan calibrate` fits the constants to your own")
    if not current(record):
        text += "; recorded with constants other than the planner's current ones"
    return text


def microbatch_note(gpu: str, software: str, microbatches: int, pp: int = 1, record: dict | None = None) -> str | None:
    """One line on runs that, like a plan of `microbatches` per step with `pp` pipeline stages on `gpu`, had few of
    them (few_microbatches): how far and which way their prediction missed. None where the plan is not such a plan, the
    profile has fewer than MIN_RUNS such runs, or they lean less than LEAN either way."""
    if not few_microbatches(gpu, microbatches, pp):
        return None
    g = _leaning(microbatch_key(software), record)
    if g is None:
        return None
    text = (f"few micro-batches: this plan runs {microbatches} per step; the {g['n']} published runs of the `{software}` "
            f"profile with at most {FEW_MICROBATCHES} on calibrated GPUs {_lean(g)}")
    return text + ": read its step time as optimistic" if g["signed_median"] < 0 else text


def small_block_note(accelerator: Accelerator, block_forward_s: float, record: dict | None = None) -> str | None:
    """One line on published runs whose blocks, like this plan's, are planned under SMALL_BLOCK_S forward per
    micro-batch (small_block): how their prediction missed, where they are MIN_RUNS or more and lean LEAN or more either
    way. Far below the threshold the group's median understates the miss, and the line says so."""
    if not small_block(accelerator, block_forward_s):
        return None
    g = _leaning(SMALL_BLOCK_KEY, record)
    if g is None:
        return None
    text = (f"small blocks: each block is planned at {1e3 * block_forward_s:.2g} ms forward per micro-batch; the "
            f"{g['n']} published runs with blocks under {1e3 * SMALL_BLOCK_S:.0f} ms {_lean(g)}")
    if g["signed_median"] < 0:
        text += ": read its step time as optimistic"
    if block_forward_s < TINY_BLOCK_S:
        text += (f". Under {1e3 * TINY_BLOCK_S:.2f} ms the step can take several times the plan (flopwise's trainer ran "
                 f"the `tiny` preset at 31x its planned step on an H200)")
    return text + (". Kernel launches, which the planner does not cost, set such a step's pace; full-iteration CUDA "
                   "graphs took that away in the two graphed runs of the group (MLPerf, predicted 8-14% too slow). "
                   "`flopwise plan host-probe` measures a PyTorch-native stack's host time per block on your server; "
                   "`--block-host-ms` costs it")


def ep_over_nodes_note(ep: int, expert_tp: int, gpus_per_node: int, record: dict | None = None) -> str | None:
    """One line on published MoE runs whose expert-parallel group, like this plan's, spans more than one node: how
    their prediction missed. None where the plan's group stays in a node or fewer than MIN_RUNS such runs are recorded."""
    nodes = ep_nodes(ep, expert_tp, gpus_per_node)
    if nodes == 1:
        return None
    record = load() if record is None else record
    g = record.get("groups", {}).get(EP_OVER_NODES_KEY, {})
    if g.get("n", 0) < MIN_RUNS:
        return None
    return (f"expert groups over nodes: this plan's ep group spans {nodes} nodes, its all-to-all priced with every row "
            f"bound for another GPU at the NIC's rate; the {g['n']} published runs like that were predicted with median "
            f"error {100 * g['median']:.1f}%, 90% within {100 * g['p90']:.1f}%, worst {100 * g['max']:.1f}%; "
            f"{round(100 * g['too_fast'] / g['n'])}% ran slower than predicted (slower on B300 over EFA with NCCL's "
            f"all-to-all, faster under DeepEP / HybridEP on InfiniBand: benchmarks/planner_calibration/FINDINGS.md, "
            f"sections 71-72)")


def precision_note(precision: str, record: dict | None = None) -> str | None:
    """One line on how the published runs in this low precision were predicted, where they are MIN_RUNS or more and
    lean LEAN or more either way (a precision's own miss, beside the GPU and stack group of `note`)."""
    g = _leaning(precision_key(precision), record)
    if g is None:
        return None
    text = f"{precision}: the {g['n']} published runs in {precision} {_lean(g)}"
    return text + ": read its step time as optimistic" if g["signed_median"] < 0 else text


def memory_note(accelerator: Accelerator, software: str, record: dict | None = None,
                unseen: tuple[int, int, str] = MEMORY_UNSEEN) -> str | None:
    """One line on how the planned peak memory compared with what published runs printed: the profile's runs where
    they are MIN_RUNS or more, else all of them; None on a measured CPU (its plans come from flopwise's own trainer,
    which tests/train checks) or where fewer than MIN_RUNS printed one. Its p90 is quoted only while the runs gathered
    blind after the memory lines were first quoted (`unseen`: within, of, the figure they were held to) kept to them;
    otherwise that share is."""
    if accelerator.measured:
        return None
    record = load() if record is None else record
    groups = record.get("memory", {})
    found = next(((groups[key], label) for key, label in ((memory_key(software), f"the `{software}` profile's"),
                                                          (MEMORY_KEY, "all profiles"))
                  if groups.get(key, {}).get("n", 0) >= MIN_RUNS), None)
    if found is None:
        return None
    g, label = found
    more = round(100 * g["too_fast"] / g["n"])
    return (f"memory track record: on {g['n']} published runs ({label}) that printed their peak memory per GPU, the "
            f"planned peak was a median {100 * g['median']:.1f}% off ({_spread(g, unseen)}); {more}% printed more than "
            f"planned (a torch counter or an unstated figure set against the planned peak less the CUDA context and "
            f"workspaces, a device total against all of it; most runs do not say which they printed)")
