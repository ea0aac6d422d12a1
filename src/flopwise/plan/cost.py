"""The cost model: step time (with its breakdown), memory per rank and cost of one parallel layout.

Compute. Every weight matmul of a block (flops.block_gemms, cut by TP as Megatron cuts it) and the attention
core run at a roofline: time = max(2 M K N / (peak x gemm_efficiency), bytes moved / (HBM bandwidth x
memory_efficiency)) (Williams et al. 2009, "Roofline"), so skinny per-device matrices (small hidden / TP,
head_dim-sized attention batches, small micro-batches) fall below the large-GEMM rate by physics, not by a
table. The backward pass is twice the forward's matmul work (dgrad + wgrad; Narayanan et al. 2021, section
5.1: "the backward pass is twice as expensive"). FlashAttention (Dao 2023) executes only the causal half of
the full-sequence attention FLOPs that flops.py counts, at FLASH_EFFICIENCY of the GEMM rate.
Non-matmul kernels (norms, activation functions, softmax, dropout, residual adds, RoPE) are memory-bound:
their traffic is estimated from the activations they produce (plan/memory.py): each kept tensor is written
once and read once in the forward (ELEMENTWISE_FWD_PASSES) and read, with its gradient written and read, in
the backward (ELEMENTWISE_BWD_PASSES).
Recomputation repeats the forward of every layer (full) or of the attention core (selective; Korthikanti et
al. 2022, section 5), including the TP collectives of the repeated forward under full recomputation.

Communication (ring collectives; Thakur et al. 2005 / NCCL): all-reduce moves 2 (n-1)/n of the buffer per
rank, all-gather and reduce-scatter (n-1)/n each, at the link's bus bandwidth (hardware.py efficiencies)
plus a per-call latency. Placement puts TP inside a node first, then DP, then PP (Megatron's rank order),
so an axis crosses nodes when the product of the inner axes exceeds gpus_per_node.
- TP (Shoeybi et al. 2019; Korthikanti et al. 2022 for sequence parallelism): 2 all-reduces of s b h per
  layer in the forward and 2 in the backward (with SP: all-gather + reduce-scatter, the same volume),
  exposed (not overlapped).
- PP (Narayanan et al. 2021, section 4.1 scatter/gather): each transfer sends s b h / t across the link plus
  an intra-node all-gather; 1F1B puts 2 transfers per micro-batch and model chunk on the critical path plus
  2 (p - 1) in fill and drain.
- DP / ZeRO (Rajbhandari et al. 2020): gradient all-reduce (ZeRO-0), reduce-scatter + parameter all-gather
  (ZeRO-1/2), and per micro-batch two parameter all-gathers + one reduce-scatter (ZeRO-3). Trainers that
  overlap the reduction with the backward (Training.software) expose only what exceeds one micro-batch's
  backward; the published Megatron runs did not overlap it.

Pipeline (Narayanan et al. 2021, section 2.2): with per-micro-batch stage times t_i, GPipe and 1F1B take
(m - 1) max t_i + sum t_i, i.e. (m + p - 1) t for equal stages (bubble (p - 1) / m); the interleaved
schedule with v chunks takes m max t_i + (sum t_i - max t_i) / v (bubble (p - 1) / (v m)).

Optimizer step: Adam is memory-bound: OPTIMIZER_BYTES_PER_PARAM bytes read and written per local parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from flopwise.errors import PlanError
from flopwise.flops import (
    Gemm,
    block_gemms,
    hardware_flops_per_token,
    head_gemm,
    model_flops_per_token,
    param_counts,
)
from flopwise.hardware import (
    COLLECTIVE_LATENCY_S,
    NETWORK_BUS_EFFICIENCY,
    NVLINK_BUS_EFFICIENCY,
)
from flopwise.layout import Layout
from flopwise.layout import check as check_layout
from flopwise.models.config import ModelConfig
from flopwise.plan import experts as moe
from flopwise.plan import memory as mem
from flopwise.plan.spec import Cluster, Training

# FlashAttention-2 reaches 50-73% of A100 peak forward and less backward (Dao 2023, section 4.1), about 0.7
# of what large GEMMs sustain.
FLASH_EFFICIENCY = 0.7
ELEMENTWISE_FWD_PASSES = 2.0  # forward: each kept activation written once, read once
ELEMENTWISE_BWD_PASSES = 3.0  # backward: activation read, its gradient written and read
# Adam step (mixed precision): read fp32 master, grad, m, v (16 B), write master, m, v (12 B) and the
# bf16/fp16 copy (2 B).
OPTIMIZER_BYTES_PER_PARAM = 30.0

BREAKDOWN_KEYS = ("compute", "recompute", "bubble", "tp", "ep", "pp", "dp", "optimizer")


@dataclass(frozen=True)
class LayerCost:
    """Seconds for one layer and one micro-batch on one rank."""

    fwd: float
    bwd: float
    recompute: float
    tp: float  # exposed TP collectives, recomputed forward included


@dataclass
class Plan:
    layout: Layout  # its split is set when not uniform (layers per pipeline stage, pp x vpp entries)
    pp_layers: tuple[int, ...]  # layers per pipeline rank
    microbatches: int
    step_time: float
    breakdown: dict[str, float]  # seconds, BREAKDOWN_KEYS
    tokens_per_s_per_gpu: float
    mfu: float
    hfu: float
    memory: list[dict[str, float]]  # per pipeline stage, bytes
    memory_limit: float
    days: float
    gpu_hours: float
    notes: list[str] = field(default_factory=list)

    @property
    def peak_memory(self) -> float:
        return max(stage["total"] for stage in self.memory)

    @property
    def busy_time(self) -> float:
        """The step without the pipeline bubble: what a rank's own clock (CPU time) sees of it."""
        return self.step_time - self.breakdown["bubble"]

    @property
    def fits(self) -> bool:
        return self.peak_memory <= self.memory_limit

    @property
    def breakdown_percent(self) -> dict[str, float]:
        return {k: 100.0 * v / self.step_time for k, v in self.breakdown.items()}

    def to_dict(self) -> dict:
        return {
            "layout": self.layout.to_dict(),
            "pp_layers": list(self.pp_layers),
            "microbatches": self.microbatches,
            "step_time_s": self.step_time,
            "breakdown_s": dict(self.breakdown),
            "breakdown_percent": self.breakdown_percent,
            "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
            "mfu": self.mfu,
            "hfu": self.hfu,
            "memory_per_stage_gb": [{k: v / 1e9 for k, v in stage.items()} for stage in self.memory],
            "peak_memory_gb": self.peak_memory / 1e9,
            "memory_limit_gb": self.memory_limit / 1e9,
            "fits": self.fits,
            "days": self.days,
            "gpu_hours": self.gpu_hours,
            "notes": list(self.notes),
        }


def ring_time(kind: str, nbytes: float, n: int, bandwidth: float) -> float:
    """One ring collective over n ranks: all_reduce moves 2 (n-1)/n of the buffer, all_gather and
    reduce_scatter (n-1)/n, at `bandwidth` (bus bandwidth, bytes/s), plus the call latency."""
    if n <= 1 or nbytes <= 0:
        return 0.0
    factor = {"all_reduce": 2.0, "all_gather": 1.0, "reduce_scatter": 1.0}[kind]
    return factor * (n - 1) / n * nbytes / bandwidth + COLLECTIVE_LATENCY_S


def even_split(layers: int, pp: int) -> tuple[int, ...]:
    """As even as possible; the remainder goes to the middle stages (the first holds the most
    activations, the last the LM head)."""
    base, extra = divmod(layers, pp)
    return tuple(base + (1 if 0 < i <= extra else 0) for i in range(pp))


class CostModel:
    """Evaluates layouts of one model on one cluster for one training run; caches per-layer costs."""

    def __init__(self, model: ModelConfig, cluster: Cluster, training: Training) -> None:
        self.model = model
        self.cluster = cluster
        self.training = training
        self.acc = cluster.accelerator
        self.seq = training.seq_len or model.seq_len
        # fp32 runs on TF32 tensor cores: half the bf16/fp16 dense rate on A100 and H100 (a measured CPU peak
        # is already the fp32 rate).
        tf32 = training.precision == "fp32" and not self.acc.measured
        self.peak = self.acc.peak_flops / (2 if tf32 else 1)
        self.gemm_rate = self.peak * self.acc.gemm_efficiency
        # an accelerator without a memory-bandwidth figure (a measured CPU) gets no memory-bound time
        self.hbm_rate = self.acc.memory_bandwidth * self.acc.memory_efficiency or float("inf")
        self.counts = param_counts(model)
        self.gemms = block_gemms(model)
        self.layer_params = mem.layer_params(model)
        self.memory_limit = mem.usable_bytes(self.acc.memory_bytes)
        self._layer_cache: dict[tuple, LayerCost] = {}

    # ---- links -----------------------------------------------------------------------------------
    def bus_bandwidth(self, span: int) -> float:
        """Bus bandwidth of a group whose ranks span `span` consecutive GPUs (inside a node or not)."""
        if span <= self.cluster.gpus_per_node:
            if self.cluster.intra_bw <= 0:
                raise PlanError(f"{self.acc.name} has no intra-node link bandwidth; give --intra-gbps")
            return self.cluster.intra_bw * NVLINK_BUS_EFFICIENCY
        return self.cluster.inter_node_bw * NETWORK_BUS_EFFICIENCY

    # ---- compute ---------------------------------------------------------------------------------
    def gemm_time(self, m: float, k: float, n: float, batch: float = 1.0) -> float:
        """Roofline time of `batch` matmuls [m, k] x [k, n] in the training dtype."""
        e = self.training.dtype_bytes
        compute = 2.0 * m * k * n * batch / self.gemm_rate
        traffic = e * (m * k + k * n + m * n) * batch / self.hbm_rate
        return max(compute, traffic)

    def _sharded(self, g: Gemm, tp: int) -> tuple[float, float]:
        k = g.k / tp if g.tp == "row" else g.k
        n = g.n / tp if g.tp == "column" else g.n
        return k, n

    def attention_time(self, tp: int, mb: int) -> float:
        """Forward time of the attention core (QK^T, softmax, AV) for one layer and micro-batch."""
        cfg, s = self.model, self.seq
        heads = math.ceil(cfg.heads / tp)
        d = cfg.head_dim
        if self.training.profile.attention == "flash":
            flops = 4.0 * s * s * d * heads * mb * 0.5  # causal: the kernel skips the masked half
            return flops / (self.gemm_rate * FLASH_EFFICIENCY)
        return self.gemm_time(s, d, s, heads * mb) + self.gemm_time(s, s, d, heads * mb)

    def layer_cost(self, tp: int, sp: bool, mb: int, recompute: str, every: int = 1) -> LayerCost:
        """Costs of one layer; with recompute = 'full' and `every` = k, averaged over the blocks (one in k
        is recomputed)."""
        key = (tp, sp, mb, recompute, every)
        if key in self._layer_cache:
            return self._layer_cache[key]
        tokens = self.seq * mb
        gemm = sum(g.count * self.gemm_time(tokens, *self._sharded(g, tp)) for g in self.gemms)
        attn = self.attention_time(tp, mb)
        probe = Layout(tp=tp, sp=sp, micro_batch=mb, recompute="none")
        act = mem.layer_activation_bytes(self.model, self.training, probe)
        ew_fwd = ELEMENTWISE_FWD_PASSES * act / self.hbm_rate
        ew_bwd = ELEMENTWISE_BWD_PASSES * act / self.hbm_rate
        fwd = gemm + attn + ew_fwd
        bwd = 2.0 * (gemm + attn) + ew_bwd
        if recompute == "full":
            rc = fwd / every
        elif recompute == "selective":
            s_act = act - mem.layer_activation_bytes(self.model, self.training, probe, recompute="selective")
            rc = attn + ELEMENTWISE_FWD_PASSES * s_act / self.hbm_rate
        else:
            rc = 0.0
        tp_time = 0.0
        if tp > 1:
            nbytes = tokens * self.model.hidden * self.training.dtype_bytes
            bw = self.bus_bandwidth(tp)
            if sp:
                one = ring_time("all_gather", nbytes, tp, bw) + ring_time("reduce_scatter", nbytes, tp, bw)
            else:
                one = ring_time("all_reduce", nbytes, tp, bw)
            # two collectives (attention, MLP) in the forward and two in the backward, two more in a
            # recomputed forward
            tp_time = one * (2 + 2 + (2 / every if recompute == "full" else 0))
        cost = LayerCost(fwd, bwd, rc, tp_time)
        self._layer_cache[key] = cost
        return cost

    def head_time(self, tp: int, mb: int) -> tuple[float, float]:
        """(forward + backward compute, TP comm) of the final norm, LM head and loss."""
        tokens = self.seq * mb
        k, n = self._sharded(head_gemm(self.model), tp)
        gemm = 3.0 * self.gemm_time(tokens, k, n)
        e = self.training.dtype_bytes
        # loss: read logits, write fp32 softmax; backward: read softmax, write the logits' gradient
        ew = tokens * n * (e + 4 + 4 + e) / self.hbm_rate
        ew += 5.0 * tokens * self.model.hidden * e / self.hbm_rate  # final norm forward + backward
        comm = 0.0
        if (
            tp > 1
        ):  # vocab-parallel cross-entropy: max, sum-exp and target logit all-reduces (s b floats each)
            comm = 3 * ring_time("all_reduce", tokens * 4, tp, self.bus_bandwidth(tp))
        return gemm + ew, comm

    def embedding_time(self, tp: int, sp: bool, mb: int) -> float:
        """Vocab-parallel embedding: one all-reduce (or reduce-scatter with SP) of s b h in the forward."""
        if tp == 1:
            return 0.0
        nbytes = self.seq * mb * self.model.hidden * self.training.dtype_bytes
        kind = "reduce_scatter" if sp else "all_reduce"
        return ring_time(kind, nbytes, tp, self.bus_bandwidth(tp))

    # ---- memory ----------------------------------------------------------------------------------
    def stage_params(self, layout: Layout, stage: int, layers: int) -> float:
        """Parameters held by one rank of pipeline stage `stage` (before ZeRO sharding)."""
        tp, p = layout.tp, layout.pp
        params = layers * self.layer_params.per_rank(tp) - moe.expert_params_elsewhere(self.model, layout, layers)
        emb = self.counts.embedding / tp
        if stage == 0:
            params += emb
        if stage == p - 1:
            params += self.model.hidden  # final norm
            if p > 1 or not self.model.tie_embeddings:
                params += emb  # the LM head (a tied copy on the last stage when pipelined, as Megatron does)
        return params

    def stage_memory(self, layout: Layout, stage: int, layers: int, microbatches: int) -> dict[str, float]:
        t = self.training
        params = self.stage_params(layout, stage, layers)
        out = moe.model_states(self.model, t.precision, layout, params, layers)
        per_layer = mem.mean_layer_activation_bytes(self.model, t, layout)
        acts = layers * mem.in_flight(layout, stage, microbatches) * per_layer
        if layout.recompute == "full" and layers:  # one layer's activations alive while it is recomputed
            acts += mem.layer_activation_bytes(self.model, t, layout, recompute="none")
        out["activations"] = acts
        logits = 0.0
        if stage == layout.pp - 1:
            n = mem.in_flight(layout, stage, microbatches) if layout.schedule == "gpipe" else 1
            logits = n * (
                mem.logits_bytes(self.model, t, layout) + mem.final_norm_bytes(self.model, t, layout)
            )
        out["logits"] = logits
        other = mem.RESERVED_BYTES
        if layout.zero >= 3:  # gathered full parameters of the current and the prefetched layer (experts: never)
            gathered = self.layer_params.per_rank(layout.tp) - moe.expert_params_per_layer(self.model)
            other += 2 * gathered * t.dtype_bytes
        out["other"] = other
        out["total"] = sum(out.values())
        return out

    # ---- the whole step --------------------------------------------------------------------------
    def microbatches(self, layout: Layout) -> int:
        return self.check(layout)

    def check(self, layout: Layout) -> int:
        """Raise LayoutError when the layout cannot run (flopwise.layout.check, the trainer's check, on this
        cluster's GPUs); return the number of micro-batches."""
        return check_layout(layout, self.model, self.training.global_batch, self.seq, self.cluster.gpus)

    def evaluate(self, layout: Layout, split: tuple[int, ...] | None = None) -> Plan:
        """Step time, memory and cost of `layout` with `split` (layers per pipeline stage, pp x vpp
        entries; default: the layout's, else as even as possible)."""
        cfg, t = self.model, self.training
        split = tuple(split or layout.split or even_split(cfg.layers, layout.stages))
        layout = layout.replace(split=split)
        m = self.check(layout)
        pp_layers = layout.rank_layers(split)
        tp, sp, mb, p, v = layout.tp, layout.sp, layout.micro_batch, layout.pp, layout.vpp
        lc = self.layer_cost(tp, sp, mb, layout.recompute, layout.recompute_every)
        head_compute, head_comm = self.head_time(tp, mb)
        emb_comm = self.embedding_time(tp, sp, mb)
        moe_comp, moe_a2a = moe.moe_layer_time(self, layout, t.expert_imbalance)

        # per-micro-batch time of each stage: (compute, recompute, tp, ep)
        stages = []
        for i, n in enumerate(pp_layers):
            comp = n * (lc.fwd + lc.bwd + moe_comp)
            tpc = n * lc.tp
            if i == 0:
                tpc += emb_comm
            if i == p - 1:
                comp += head_compute
                tpc += head_comm
            stages.append((comp, n * lc.recompute, tpc, n * moe_a2a))
        totals = [sum(s) for s in stages]
        slowest = max(range(p), key=lambda i: totals[i])
        t_max = totals[slowest]
        if layout.schedule == "interleaved":
            pipeline = m * t_max + (sum(totals) - t_max) / v
        else:
            pipeline = (m - 1) * t_max + sum(totals)
        comp, rc, tpc, epc = stages[slowest]
        breakdown = {"compute": m * comp, "recompute": m * rc, "bubble": pipeline - m * t_max, "tp": m * tpc,
                     "ep": m * epc}

        # pipeline point-to-point: scatter s b h / t across the link, all-gather it inside the TP group
        pp_time = 0.0
        if p > 1:
            nbytes = self.seq * mb * cfg.hidden * t.dtype_bytes
            one = nbytes / tp / self.bus_bandwidth(tp * layout.dp * p) + COLLECTIVE_LATENCY_S
            if tp > 1 and not sp:
                one += ring_time("all_gather", nbytes, tp, self.bus_bandwidth(tp))
            pp_time = (2 * m * v + 2 * (p - 1)) * one
        breakdown["pp"] = pp_time

        # data parallel / ZeRO over the largest stage's parameters
        dp, shard = layout.dp, layout.shard_degree
        stage_params = [self.stage_params(layout, i, n) for i, n in enumerate(pp_layers)]
        local = max(stage_params)
        dp_time = 0.0
        if dp > 1:
            bw = self.bus_bandwidth(tp * dp)
            grad_bytes = 2 if t.precision == "fp16" else 4  # Megatron keeps fp32 main grads for bf16
            replicas = 0.0
            if layout.zero and shard < dp:  # hybrid: ZeRO inside groups of `shard`, all-reduce across them
                replicas = ring_time("all_reduce", local / shard * grad_bytes, dp // shard, bw)
                dp, bw = shard, self.bus_bandwidth(tp * shard)
            e = t.dtype_bytes
            window_b = lc.bwd * pp_layers[slowest]  # one micro-batch's backward on the stage
            window_f = lc.fwd * pp_layers[slowest]
            overlap = layout.zero >= t.profile.overlap_from_zero
            if layout.zero == 0:
                red = ring_time("all_reduce", local * grad_bytes, dp, bw)
                dp_time = max(0.0, red - window_b) if overlap else red
            elif layout.zero in (1, 2):
                red = ring_time("reduce_scatter", local * grad_bytes, dp, bw)
                gat = ring_time("all_gather", local * e, dp, bw)
                dp_time = (max(0.0, red - window_b) + max(0.0, gat - window_f)) if overlap else red + gat
            else:
                per_mb = 2 * ring_time("all_gather", local * e, dp, bw) + ring_time(
                    "reduce_scatter", local * grad_bytes, dp, bw
                )
                if overlap:
                    first = ring_time("all_gather", self.layer_params.per_rank(tp) * e, dp, bw)
                    dp_time = m * max(0.0, per_mb - (window_f + window_b)) + first
                else:
                    dp_time = m * per_mb
            dp_time += replicas
        breakdown["dp"] = dp_time
        opt_params = local / (shard if layout.zero >= 1 else 1)
        opt_bytes = 28.0 if t.precision == "fp32" else OPTIMIZER_BYTES_PER_PARAM
        breakdown["optimizer"] = opt_params * opt_bytes / self.hbm_rate

        step = sum(breakdown.values())
        tokens_per_step = t.global_batch * self.seq
        tps_gpu = tokens_per_step / step / self.cluster.gpus
        mfu = tps_gpu * model_flops_per_token(cfg, self.seq) / self.acc.peak_flops
        hfu = tps_gpu * hardware_flops_per_token(cfg, layout.recompute, self.seq) / self.acc.peak_flops
        memory = [self.stage_memory(layout, i, n, m) for i, n in enumerate(pp_layers)]
        limit = self.memory_limit
        seconds = t.tokens / (tps_gpu * self.cluster.gpus) if t.tokens else 0.0
        return Plan(
            layout=layout,
            pp_layers=pp_layers,
            microbatches=m,
            step_time=step,
            breakdown=breakdown,
            tokens_per_s_per_gpu=tps_gpu,
            mfu=mfu,
            hfu=hfu,
            memory=memory,
            memory_limit=limit,
            days=seconds / 86400.0,
            gpu_hours=seconds * self.cluster.gpus / 3600.0,
        )
