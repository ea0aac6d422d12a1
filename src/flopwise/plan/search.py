"""Layout search: every TP x PP (with interleaving) x DP x ZeRO x micro-batch x recompute x sequence-parallel
choice, with a pipeline split balanced by time and memory, ranked by step time among those that fit.

Non-uniform pipeline split (Yuan 2.0, reference/yuan2.md): under 1F1B stage i holds p - i micro-batches, so
early stages run out of memory first, and the last stage also runs the LM head and the loss. For a time
budget T each stage may take floor((T - extra_i) / t_layer) layers (extra_i: embedding or head time) and at
most cap_i layers that fit its memory; the smallest T whose allowances sum to the layer count wins, and any
surplus is taken back from the slowest, then earliest, stages. Without memory pressure this is the uniform
split (give or take the head); under pressure it gives Yuan's shape, e.g. [2,2,3,3,4,4,4,2].
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from dataclasses import dataclass, field

from flopwise.errors import LayoutError, PlanError
from flopwise.flops import RECOMPUTE_MODES, param_counts
from flopwise.hardware import CALIBRATED, CATALOGUE, FITTED, GB, Accelerator
from flopwise.layout import Layout, max_stages
from flopwise.models.config import ModelConfig
from flopwise.plan import track_record
from flopwise.plan.cost import Constants, CostModel, Plan, class_efficiency, even_split, fa3_over_fa2
from flopwise.plan.experts import expert_degrees
from flopwise.plan.spec import Cluster, Training, attention_class, attention_kernel, fallback_words, falls_back

MICRO_BATCHES = (1, 2, 4, 8, 16, 32)
MAX_VPP = 8
RECOMPUTE_EVERY = (1, 2, 4)  # full recomputation of every block, every 2nd, every 4th


@dataclass
class SearchResult:
    plans: list[Plan]  # the best plans that fit, fastest first
    evaluated: int
    feasible: int
    notes: list[str] = field(default_factory=list)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def balanced_split(
    cm: CostModel, layout: Layout, microbatches: int, require_fit: bool = True
) -> tuple[int, ...] | None:
    """Layers per stage balancing time under each stage's memory cap; None when no split fits."""
    cfg, p = cm.model, layout.pp
    if p == 1:
        return (cfg.layers,)
    if p > cfg.layers:  # a stage without a layer: the even split places the ends so (split_candidates)
        return None
    t_layer = cm.layer_gpu_time(layout)
    t_layer += cm.launch_wait(cm.block_host_time(layout), t_layer)
    head, head_comm = cm.head_time(layout.tp, layout.micro_batch)
    extra = [0.0] * p
    extra[0] += cm.embedding_time(layout.tp, layout.sp, layout.micro_batch)
    if cm.dense is not None:  # an MoE model's leading dense blocks, on the first stage, take their own (shorter) time
        t_dense = cm.dense.layer_gpu_time(layout)
        t_dense += cm.launch_wait(cm.dense.block_host_time(layout), t_dense)
        extra[0] -= cfg.dense_layers * (t_layer - t_dense)
    extra[-1] += head + head_comm
    caps = [cfg.layers] * p
    if require_fit:
        limit = cm.memory_limit
        for i in range(p):
            one = cm.stage_memory(layout, i, 1, microbatches)["total"]
            two = cm.stage_memory(layout, i, 2, microbatches)["total"]
            per_layer = two - one
            caps[i] = min(cfg.layers, int((limit - one) // per_layer) + 1) if one <= limit else 0
        if min(caps) < 1 or sum(caps) < cfg.layers:
            return None

    def allowed(budget: float) -> list[int]:
        return [max(0, min(caps[i], int((budget - extra[i]) / t_layer + 1e-9))) for i in range(p)]

    candidates = sorted({k * t_layer + e for k in range(1, cfg.layers + 1) for e in set(extra)})
    lo = bisect.bisect_left(candidates, math.ceil(cfg.layers / p) * t_layer * 0.999)
    best = None
    left, right = max(0, lo - 1), len(candidates) - 1
    while left <= right:  # smallest budget whose allowances cover the layers with >= 1 layer per stage
        mid = (left + right) // 2
        got = allowed(candidates[mid])
        if sum(got) >= cfg.layers and min(got) >= 1:
            best, right = got, mid - 1
        else:
            left = mid + 1
    if best is None:
        return None
    layers = list(best)
    while sum(layers) > cfg.layers:  # take back from the slowest stage, the earliest on ties
        times = [layers[i] * t_layer + extra[i] if layers[i] > 1 else -1.0 for i in range(p)]
        worst = max(range(p), key=lambda i: (times[i], -i))
        layers[worst] -= 1
    return tuple(layers)


def split_candidates(cm: CostModel, layout: Layout, microbatches: int, split: str = "balanced",
                     require_fit: bool = True) -> list[tuple[int, ...]]:
    """Pipeline splits to cost for a layout: its own; else the uniform one (where the layers divide evenly,
    or asked for, or interleaved) and the time- and memory-balanced one."""
    if layout.split is not None:
        return [layout.split]
    layers = cm.model.layers
    splits = []
    if layers % layout.pp == 0 or split == "uniform" or layout.vpp > 1 or layout.stages > layers:
        splits.append(even_split(layers, layout.stages))
    if split == "balanced" and layout.pp > 1 and layout.vpp == 1:
        bal = balanced_split(cm, layout, microbatches, require_fit=require_fit)
        if bal is not None and bal not in splits:
            splits.append(bal)
    return splits


def best_split(cm: CostModel, layout: Layout) -> tuple[int, ...]:
    """The split the search would choose for this layout: the fastest candidate that fits memory, else the
    one needing least memory (balanced for time alone when none fits). The trainer's `split = "auto"`."""
    m = cm.check(layout)
    splits = split_candidates(cm, layout, m) or split_candidates(cm, layout, m, require_fit=False)
    plans = [cm.evaluate(layout, s) for s in splits or [even_split(cm.model.layers, layout.stages)]]
    fitting = [p for p in plans if p.fits]
    best = min(fitting, key=lambda p: p.step_time) if fitting else min(plans, key=lambda p: p.peak_memory)
    return best.layout.split


def _candidates(cm: CostModel, fixed: dict, failures: list[str] | None = None) -> list[Layout]:
    """Layouts to try: every combination of the fields not in `fixed`, pruned by cheap divisibility; the
    search then keeps those that pass flopwise.layout.check (the trainer's check)."""
    cfg, gpus, gpn = cm.model, cm.cluster.gpus, cm.cluster.gpus_per_node
    gpus //= fixed.get("cp", 1)  # context-parallel ranks share sequences: the other axes split the rest
    gb = cm.training.global_batch
    out = []
    tps = [fixed["tp"]] if "tp" in fixed else [t for t in _divisors(min(gpn, gpus)) if gpus % t == 0]
    if fixed.get("sp"):  # sequence parallelism splits the TP group's sequence: it asks for tp > 1
        tps = [t for t in tps if t > 1]
    # fields the search never varies: they are taken as given (defaults otherwise)
    given = {k: fixed[k] for k in ("dp_shard", "split", "ep", "cp", "etp") if k in fixed}
    for tp in tps:
        if tp < 1 or gpus % tp:
            continue
        rest = gpus // tp
        if "pp" in fixed:
            pps = [fixed["pp"]]
        elif "dp" in fixed:
            pps = [rest // fixed["dp"]] if rest % fixed["dp"] == 0 else []
        else:
            pps = [p for p in _divisors(rest) if p <= cfg.layers]
        for pp in pps:
            if pp < 1 or rest % pp:
                continue
            dp = rest // pp
            if ("dp" in fixed and fixed["dp"] != dp) or gb % dp:
                continue
            mbs = [fixed["micro_batch"]] if "micro_batch" in fixed else [b for b in MICRO_BATCHES if (gb // dp) % b == 0]
            for mb in mbs:
                if mb < 1 or (gb // dp) % mb:
                    continue
                m = gb // (dp * mb)
                if "vpp" in fixed:
                    vpps = [fixed["vpp"]]
                elif pp > 1 and m % pp == 0 and cfg.layers % pp == 0:
                    vpps = [v for v in _divisors(cfg.layers // pp) if v <= MAX_VPP]
                elif pp > 1 and m % pp == 0:  # uneven: model chunks as even as the layers allow, the first
                    # and the last chunk one layer short (Llama 3's 126 layers on 16 stages, section 3.3.2), or
                    # holding only the embedding and the head (126 layers on 16 x 8 chunks: layout.check)
                    vpps = [v for v in range(1, MAX_VPP + 1) if pp * v <= max_stages(cfg.layers)]
                else:
                    vpps = [1]
                schedule = fixed.get("schedule", "1f1b")
                if schedule == "interleaved":  # a fixed schedule keeps its own chunks: interleaved > 1, others 1
                    vpps = [v for v in vpps if v > 1]
                elif "schedule" in fixed:
                    vpps = [v for v in vpps if v == 1]
                zeros = [fixed["zero"]] if "zero" in fixed else ([0] if dp == 1 else [0, 1] if pp > 1 else [0, 1, 2, 3])
                sps = [fixed["sp"]] if "sp" in fixed else ([False, True] if tp > 1 else [False])
                # per-op checkpointing ("op") is costed where asked for, not searched: the calibration rows' torchtitan
                # runs are read as "selective" (benchmarks/planner_calibration/FINDINGS.md section 36)
                rcs = [fixed["recompute"]] if "recompute" in fixed else [
                    r for r in RECOMPUTE_MODES
                    if r != "op" and (r != "selective" or cm.training.profile.selective_recompute)]
                # a blank recompute: full recomputation of every block or of one block in k (Megatron's
                # recompute_method = 'block'), so the search finds the least recomputation that fits; a stated
                # 'full' means every block
                everys = ([fixed["recompute_every"]] if "recompute_every" in fixed
                          else [1] if "recompute" in fixed else list(RECOMPUTE_EVERY))
                for vpp in vpps:
                    for zero in zeros:
                        for sp in sps:
                            for rc in rcs:
                                for every in everys if rc == "full" else [fixed.get("recompute_every", 1)]:
                                    try:
                                        out.append(Layout(
                                            dp=dp, zero=zero, tp=tp, sp=sp, pp=pp, vpp=vpp,
                                            schedule="interleaved" if vpp > 1 else schedule, micro_batch=mb,
                                            recompute=rc, **dict(given, recompute_every=every),
                                        ))
                                    except LayoutError as exc:  # a fixed field's value is malformed
                                        if failures is not None:
                                            failures.append(str(exc))
    if "ep" not in fixed:  # MoE: every expert-parallel degree the data-parallel ranks allow
        out = [layout.replace(ep=ep) for layout in out for ep in expert_degrees(cfg, layout.dp)]
    return out


def calibration_notes(acc: Accelerator) -> list[str]:
    """What a plan's times rest on, where that is less than published runs confirm: a catalogue GPU outside
    hardware.CALIBRATED, whose constants were fitted on published runs that later blind runs did not bear out
    (hardware.FITTED), or are datasheet figures."""
    if acc.measured or acc.name not in CATALOGUE or acc.name in CALIBRATED:
        return []
    if acc.name in FITTED:
        return [f"{acc.name}: this GPU's constants were fitted on published runs, but the latest blind runs on it missed "
                f"the planner's target of 8% median / 25% worst (benchmarks/planner_calibration/FINDINGS.md, section 61): "
                f"its track record line says how far its plans have been off"]
    return [f"{acc.name}: no published run calibrates this GPU's constants (datasheet figures, at most a GEMM "
            f"benchmark); published runs on uncalibrated GPUs were mostly slower than predicted (benchmarks/RESULTS.md, "
            f"'Sixth blind holdout')"]


def domain_notes(cluster: Cluster) -> list[str]:
    """An NVLink domain that is not the node (Accelerator.nvlink_domain_gpus): a rack planned with smaller nodes, whose
    traffic between them is costed at the NIC rate where the rack would carry it over NVLink; or bridged pairs inside
    a larger node, whose wider groups are costed at the PCIe rate; or a mesh of direct links, where a small group runs
    over few of them (Cluster.intra_link)."""
    acc = cluster.accelerator
    domain = acc.nvlink_domain_gpus
    full = min(cluster.gpus, cluster.gpus_per_node)  # the GPUs of one node this plan uses
    if acc.mesh_links > 0 and full > 1:
        pair, node = cluster.intra_link(2, 2), cluster.intra_link(full, full)
        return [f"{acc.name}: its fabric links each pair of a node's GPUs directly, so a group of g GPUs in a node "
                f"runs over g - 1 links: a pair (and every pipeline or ring-attention send) at {pair / GB:.4g} GB/s per "
                f"direction, {full} GPUs at {node / GB:.4g}" + ("; groups smaller than the node move data slower"
                                                                 if full > 2 else "")]
    if 0 < domain < cluster.gpus_per_node and cluster.intra_link(cluster.gpus_per_node) != cluster.intra_bw:
        return [f"{acc.name}: NVLink joins groups of {domain} GPUs only (bridges); a group wider than that (TP, or data "
                f"parallelism inside a node) crosses PCIe, costed at {acc.pcie_bandwidth / GB:.0f} GB/s per GPU and "
                f"direction: keep TP within {domain}, or give --intra-gbps for the server's own links"]
    if cluster.gpus <= cluster.gpus_per_node or cluster.gpus_per_node >= domain:
        return []
    return [f"{acc.name}: NVLink spans up to {domain} GPUs (one rack), but this plan puts "
            f"{cluster.gpus_per_node} per node, so traffic between them is costed at the NIC rate: give "
            f"--gpus-per-node {domain} (or the GPUs per rack the job uses)"]


def precision_notes(training: Training, acc: Accelerator, moe: bool = False) -> list[str]:
    """What a precision's times rest on: fp32 on a GPU is costed with TF32 off, FP4's GEMM rate is assumed (plan/cost.py
    takes FP8's fraction of peak), and how the published (dense) runs in that precision were predicted, where they lean
    one way (track_record; not for a mixture of experts, `moe`, whose runs have their own record)."""
    low = training.gemm_format
    notes = []
    if training.precision == "fp32" and not acc.measured:
        notes.append(f"fp32: the GEMMs run on the CUDA cores at {acc.fp32_peak_flops / 1e12:.3g} TFLOP/s (TF32 off, "
                     "PyTorch's default); plan tf32 if the run sets torch.backends.cuda.matmul.allow_tf32 or "
                     "torch.set_float32_matmul_precision('high'); MFU is against the bf16 dense peak")
    if low and low.peak_field == "fp4_peak_flops":
        notes.append(f"{training.precision}: the FP4 GEMMs are taken to reach FP8's fraction of the FP4 peak (no FP4 "
                     "GEMM rate from training runs); the bf16 first and last blocks and the Hadamard transforms of "
                     "the FP4 recipes are not costed; MFU is against the bf16 dense peak, so it can pass 100%")
    record = None if moe else track_record.precision_note(training.precision)
    return notes + ([record] if record else [])


def profile_fa2(training: Training, acc: Accelerator) -> bool:
    """Whether `training` is costed with its profile's FlashAttention-2 on a part where FA3-class kernels run faster
    (spec.attention_class): a run that does not say which kernel it uses."""
    return (training.attention in (None, "flash") and training.dtype_bytes == 2
            and attention_class(training, acc) == "fa2")


def attention_notes(training: Training, acc: Accelerator, constants: Constants | None = None,
                    fa3_step: tuple[Plan, Plan] | None = None) -> list[str]:
    """The attention kernel a stack falls back to on a part without FlashAttention-2 (spec.falls_back), and the
    profile's FlashAttention-2 where a faster class runs (profile_fa2), with the best plan's step under FA3
    (`fa3_step`: the plan and its layout costed so)."""
    if profile_fa2(training, acc):
        step = ""
        if fa3_step:
            was, fa3 = fa3_step[0].step_time, fa3_step[1].step_time
            step = f" (the first plan's step {fa3:.3g} s, {fa3 / was - 1:+.0%})"
        return [f"attention: the `{training.software}` profile's FlashAttention-2, costed at "
                f"{class_efficiency('fa2', acc, constants):.2f} of the peak on {acc.name}, a rate fitted "
                "on PyTorch-native runs that predicts them better than FA3's, whatever kernel they ran "
                "(benchmarks/RESULTS.md, 'Attention kernel classes'); --attention fa3 costs an FA3-class kernel "
                "(FlashAttention-3, cuDNN's fused attention: SDPA's cuDNN backend; AMD's AITER) at "
                f"{fa3_over_fa2(constants, acc):.1f}x that{step}"]
    if not falls_back(training, acc):
        return []
    fused = attention_kernel(training, acc) == "flash"
    return [fallback_words(training, acc) + ("" if fused else ", costed so, time and memory; --attention flash if "
                                                              "the run had a memory-efficient fused kernel")]


def plan_notes(model: ModelConfig, cluster: Cluster, training: Training, constants: Constants | None = None,
               fa3_step: tuple[Plan, Plan] | None = None) -> list[str]:
    """What a plan's times rest on (calibration_notes, domain_notes, precision_notes, attention_notes), and how well
    published runs like it were predicted, step time and peak memory."""
    record = track_record.note(cluster.accelerator.name, training.software, param_counts(model).total, moe=model.is_moe)
    # the memory lines are dense runs' (the MoE runs printed no peak): an MoE plan quotes its MoE step line only
    memory = None if model.is_moe else track_record.memory_note(cluster.accelerator, training.software)
    return (calibration_notes(cluster.accelerator) + domain_notes(cluster)
            + precision_notes(training, cluster.accelerator, model.is_moe)
            + attention_notes(training, cluster.accelerator, constants, fa3_step) + [n for n in (record, memory) if n])


def search(
    model: ModelConfig,
    cluster: Cluster,
    training: Training,
    fixed: dict | None = None,
    top: int = 5,
    split: str = "balanced",
    require_fit: bool = True,
    explain: bool = True,
    constants: Constants | None = None,
) -> SearchResult:
    """The `top` fastest layouts that fit memory, searching every field not in `fixed`.

    split: 'balanced' (time- and memory-balanced non-uniform pipeline split) or 'uniform' (as even as the
    layer count allows, Megatron's split). Raises PlanError, naming the binding constraint and the closest
    feasible alternative, when nothing fits."""
    fixed = dict(fixed or {})
    cm = CostModel(model, cluster, training, constants)
    plans: list[Plan] = []
    failures: list[str] = []
    closest: Plan | None = None  # the infeasible plan needing the least memory relative to the device
    evaluated = 0
    for layout in _candidates(cm, fixed, failures):
        try:
            m = cm.check(layout)
        except LayoutError as exc:
            failures.append(str(exc))
            continue
        for stage_layers in split_candidates(cm, layout, m, split, require_fit):
            try:
                plan = cm.evaluate(layout, stage_layers)
            except (LayoutError, PlanError) as exc:
                failures.append(str(exc))
                continue
            evaluated += 1
            if plan.fits or not require_fit:
                plans.append(plan)
            elif closest is None or plan.peak_memory < closest.peak_memory:
                closest = plan
    plans.sort(key=lambda p: (not p.fits, p.step_time))
    feasible = sum(p.fits for p in plans)
    if plans:
        # per plan: how (dense) runs with as few micro-batches per step, or as small blocks, went; an MoE plan quotes
        # its MoE runs' line only (plan_notes)
        for plan in [] if model.is_moe else plans[:top]:
            few = track_record.microbatch_note(cluster.accelerator.name, training.software, plan.microbatches,
                                               plan.layout.pp)
            costed = training.block_host_s is not None or plan.block_host_s > 0  # the plan has the host's time
            small = (None if costed
                     else track_record.small_block_note(cluster.accelerator, cm.block_forward_time(plan.layout)))
            if few and small:  # most small-block runs also ran few micro-batches: one miss, told twice
                small += "; these runs and the few-micro-batch ones above are largely the same: do not add the two"
            plan.notes.extend(n for n in (few, small) if n)
        for plan in plans[:top] if model.is_moe else []:  # an MoE plan whose expert groups cross the network
            over = track_record.ep_over_nodes_note(plan.layout.ep, plan.layout.expert_tp, cluster.gpus_per_node)
            plan.notes.extend([over] if over else [])
        fa3_step = None
        if explain and profile_fa2(training, cluster.accelerator):  # the first plan's layout under FA3-class attention
            fa3 = CostModel(model, cluster, dataclasses.replace(training, attention="fa3"), constants)
            fa3_step = (plans[0], fa3.evaluate(plans[0].layout))
        return SearchResult(plans[:top], evaluated, feasible, plan_notes(model, cluster, training, constants, fa3_step))
    if not explain:  # the reason in a few words, without the search for alternatives
        if closest is not None:
            raise PlanError(f"no layout fits in {cm.cluster.accelerator.name} memory (the least memory-hungry, "
                            f"{closest.layout.short()}, needs {_gb(closest.peak_memory)})")
        reason = _fixed_reason(cm, fixed) or (failures[0] if failures else "no layout matches the fixed fields")
        raise PlanError(f"no layout can run: {reason}")
    raise PlanError(_explain(cm, fixed, failures, closest))


def _gb(x: float) -> str:
    return f"{x / 1e9:.1f} GB"


def _explain(cm: CostModel, fixed: dict, failures: list[str], closest: Plan | None) -> str:
    """Why nothing fits (the binding constraint) and the closest feasible alternative."""
    cfg, cluster, training = cm.model, cm.cluster, cm.training
    if closest is not None:
        stage = max(range(len(closest.memory)), key=lambda i: closest.memory[i]["total"])
        parts = closest.memory[stage]
        detail = ", ".join(f"{k} {_gb(v)}" for k, v in parts.items() if k != "total" and v)
        head = (
            f"nothing fits in {cluster.accelerator.name} memory ({_gb(closest.memory_limit)} usable of "
            f"{_gb(cluster.accelerator.memory_bytes)}): the least memory-hungry layout "
            f"({closest.layout.short()}) needs {_gb(parts['total'])} on pipeline stage {stage} ({detail})"
        )
        return head + "; " + _alternative(cm, fixed)
    if fixed:
        reason = _fixed_reason(cm, fixed) or (
            failures[0] if failures else "no layout matches the fixed fields"
        )
        return f"the requested layout cannot run: {reason}; " + _alternative(cm, fixed)
    gb = training.global_batch
    reason = (
        failures[0] if failures else f"no tp x pp x dp of {cluster.gpus} GPUs divides the global batch {gb}"
    )
    return f"no layout of {cfg.layers} layers on {cluster.gpus} GPUs works: {reason}; " + _alternative(
        cm, fixed
    )


def _fixed_reason(cm: CostModel, fixed: dict) -> str | None:
    """The first fixed field that rules out every layout, in words."""
    cfg, gpus, gpn = cm.model, cm.cluster.gpus, cm.cluster.gpus_per_node
    gb = cm.training.global_batch
    tp, pp, dp, mb, cp = (fixed.get(k) for k in ("tp", "pp", "dp", "micro_batch", "cp"))
    if fixed.get("sp") and tp == 1:
        return "sp = 1 (sequence parallelism) needs tp > 1: it splits the TP group's sequence"
    vpp, schedule = fixed.get("vpp"), fixed.get("schedule")
    if schedule in ("1f1b", "gpipe") and vpp is not None and vpp > 1:
        return f"schedule = {schedule} runs one model chunk per stage; vpp = {vpp} is the interleaved schedule's"
    if schedule == "interleaved" and ((vpp is not None and vpp < 2) or pp == 1):
        return "schedule = interleaved needs pp > 1 and vpp > 1 (model chunks per stage)"
    if pp is not None and pp > max_stages(cfg.layers):
        return (f"pp = {pp} pipeline stages but the model has only {cfg.layers} layers (plus one stage for the "
                "embedding and one for the head)")
    if tp is not None and tp > gpn:
        return f"tp = {tp} exceeds the {gpn} GPUs of a node (TP is placed inside a node)"
    product = 1
    for v in (tp, pp, dp, cp):
        product *= v or 1
    if gpus % product:
        named = " x ".join(f"{k} {v}" for k, v in (("tp", tp), ("pp", pp), ("dp", dp), ("cp", cp)) if v)
        return f"the fixed degrees ({named} = {product}) do not divide the {gpus} GPUs"
    if dp is not None and gb % (dp * (mb or 1)):
        return f"global batch {gb} is not divisible by dp x micro_batch = {dp} x {mb or 1}"
    if mb is not None and gb % mb:
        return f"global batch {gb} is not divisible by micro_batch = {mb}"
    return None


def _alternative(cm: CostModel, fixed: dict) -> str:
    """Relax one thing at a time: a fixed field, the global batch, then the GPU count."""
    cfg, cluster, training = cm.model, cm.cluster, cm.training
    options: list[tuple[float, str]] = []
    for key in list(fixed):
        relaxed = {k: v for k, v in fixed.items() if k != key}
        try:
            res = search(cfg, cluster, training, relaxed, top=1, explain=False)
            options.append(
                (
                    res.plans[0].step_time,
                    f"without {key}={fixed[key]}: {res.plans[0].layout.short()} "
                    f"({res.plans[0].step_time:.3g} s/step)",
                )
            )
        except PlanError:
            pass
    if options:
        return "closest feasible alternative " + min(options)[1]
    gb = training.global_batch
    for delta in range(1, gb):
        for cand in (gb - delta, gb + delta):
            if cand < 1:
                continue
            try:
                res = search(
                    cfg,
                    cluster,
                    dataclasses.replace(training, global_batch=cand),
                    fixed,
                    top=1,
                    explain=False,
                )
                return (
                    f"closest feasible alternative: global batch {cand} with {res.plans[0].layout.short()} "
                    f"({res.plans[0].step_time:.3g} s/step)"
                )
            except PlanError:
                continue
        if delta > 64:
            break
    gpus, gpn = cluster.gpus, cluster.gpus_per_node
    # more GPUs, smallest first: doublings of the request, or whole nodes once past one node
    counts = {gpus * f for f in (2, 4, 8, 16, 32, 64)} | {gpn * 2**k for k in range(12)}
    for count in sorted(c for c in counts if gpus < c <= gpus * 64 and (c <= gpn or c % gpn == 0)):
        bigger = Cluster(cluster.accelerator, count, gpn, cluster.intra_node_bw, cluster.inter_node_bw)
        try:
            res = search(
                cfg,
                bigger,
                training,
                {k: v for k, v in fixed.items() if k in ("recompute",)},
                top=1,
                explain=False,
            )
            return (
                f"closest feasible alternative: {bigger.gpus} GPUs with {res.plans[0].layout.short()} "
                f"({res.plans[0].step_time:.3g} s/step, {_gb(res.plans[0].peak_memory)} per rank)"
            )
        except PlanError:
            continue
    return "no alternative found within 64x the GPUs; use a larger-memory accelerator or a smaller model"
