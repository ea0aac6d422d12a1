"""The cost model: step time (with its breakdown), memory per rank and cost of one parallel layout.

Compute. Every weight matmul of a block (flops.block_gemms, cut by TP as Megatron cuts it) and the attention
core run at a roofline: time = max(2 M K N / (peak x gemm_efficiency), bytes moved / (HBM bandwidth x
memory_efficiency)) (Williams et al. 2009, "Roofline"), so skinny per-device matrices (small hidden / TP,
head_dim-sized attention batches, small micro-batches) fall below the large-GEMM rate by physics, not by a
table. The backward pass is twice the forward's matmul work (dgrad + wgrad; Narayanan et al. 2021, section
5.1: "the backward pass is twice as expensive"). FlashAttention (Dao 2023) executes only the causal half of
the full-sequence attention FLOPs that flops.py counts, at FLASH_EFFICIENCY of the GEMM rate (on Hopper-class
parts, a fraction of the peak by kernel class; where the accelerator carries a measured attention rate, a CPU's,
at that rate, forward and backward alike: Accelerator.attention_efficiency); on a part FlashAttention does not run
on, each stack's own fallback (spec.attention_kernel). On a measured CPU (or an accelerator
file that sets it) each op flopwise's model dispatches adds the accelerator's host time per op
(Accelerator.op_overhead_s; the ops counted by opcount.model_ops) to every micro-batch, whatever its size: small
micro-batches are slower than their FLOPs say (a compiled block's fused kernels are not counted).
Non-matmul kernels (norms, activation functions, softmax, dropout, residual adds, RoPE) are memory-bound:
their traffic is estimated from the activations they produce (plan/memory.py, the tensors the kernels write, as
an eager stack keeps them, even where a compiled one keeps fewer): each such tensor is written once and read once in
the forward (ELEMENTWISE_FWD_PASSES) and read, with its gradient written and read, in the backward
(ELEMENTWISE_BWD_PASSES).
Recomputation repeats the forward of every layer (full) or of the attention core (selective; Korthikanti et
al. 2022, section 5), including the TP collectives of the repeated forward under full recomputation. PyTorch's
non-reentrant checkpoint (torch.utils.checkpoint(use_reentrant=False), used by torchtitan, FSDP stacks and
flopwise) stops recomputing once the last tensor the backward saved is back, so the block's last GEMM (the MLP's
down projection, whose output nothing saves) and its TP collective are not repeated; reentrant checkpointing
(Megatron, DeepSpeed) reruns the whole block.

Communication (ring collectives; Thakur et al. 2005 / NCCL): all-reduce moves 2 (n-1)/n of the buffer per
rank, all-gather and reduce-scatter (n-1)/n each, at the link's bus bandwidth (hardware.py efficiencies)
plus a per-call latency. Placement puts TP inside a node first, then DP, then PP (Megatron's rank order),
so an axis crosses nodes when the product of the inner axes exceeds gpus_per_node.
- TP (Shoeybi et al. 2019; Korthikanti et al. 2022 for sequence parallelism): 2 all-reduces of s b h per
  layer in the forward and 2 in the backward (with SP: all-gather + reduce-scatter, the same volume),
  exposed, except where the stack pipelines each collective with the adjacent GEMM in tp chunks
  (Transformer Engine's userbuffers overlap, Software.tp_overlap): then one chunk per collective stays exposed,
  plus whatever the shortest bordering GEMM group cannot cover.
- PP (Narayanan et al. 2021, section 4.1 scatter/gather): each transfer sends s b h / t across the link plus
  an intra-node all-gather; 1F1B puts 2 transfers per micro-batch and model chunk on the critical path plus
  2 (p - 1) in fill and drain.
- DP / ZeRO (Rajbhandari et al. 2020): gradient all-reduce (ZeRO-0), reduce-scatter + parameter all-gather
  (ZeRO-1/2), and per micro-batch two parameter all-gathers + one reduce-scatter (ZeRO-3). Trainers that
  overlap the reduction with the backward (Training.software) expose only what exceeds one micro-batch's
  backward; the published Megatron runs did not overlap it.

Pipeline (Narayanan et al. 2021, section 2.2): with per-micro-batch stage times t_i, GPipe and 1F1B take
(m - 1) max t_i + sum t_i, i.e. (m + p - 1) t for equal stages (bubble (p - 1) / m); the interleaved
schedule with v chunks takes m max t_i + (sum t_i - max t_i) / v (bubble (p - 1) / (v m)). The same holds
over an uneven split, t_i being each rank's chunks together: Llama 3 ran 126 layers as 16 x v chunks with the
first and the last chunk one layer short (Llama Team 2024, section 3.3.2; even_split over pp x vpp chunks), and
Megatron-Core's recipes run it on 16 x 8 = 128 chunks, the first holding only the embedding and the last only the
head and loss.

Optimizer step: Adam is memory-bound: OPTIMIZER_BYTES_PER_PARAM bytes read and written per local parameter.

Added for issue 14 (published runs beyond the two Megatron papers; benchmarks/planner_calibration/FINDINGS.md):
- Software profiles (spec.SOFTWARE) for the stacks: attention kernel class (FlashAttention-2 uses Ampere
  mma instructions and reaches about 35% of Hopper's peak; FA3 / cuDNN fused attention about 75% forward and
  less backward: Shah et al. 2024, arXiv 2407.08608), eager stacks' unfused elementwise traffic
  (Constants.eager_traffic x the fused traffic), DeepSpeed's blocking pipeline engine.
- FSDP / ZeRO-3 per layer: the next layer's parameter all-gather is prefetched behind this layer's forward,
  and its all-gather plus the previous layer's gradient reduce-scatter behind this layer's backward
  (torch FSDP's backward prefetch; DeepSpeed ZeRO-3 prefetch); only what exceeds the layer's compute is
  exposed, plus the first all-gather and the last reduce-scatter of each micro-batch. HSDP (dp_shard < dp)
  all-reduces each layer's 1/dp_shard gradient shard across the replicas in the same window.
- Context parallelism (ring attention; Liu et al. 2023, Megatron-Core/TE's load-balanced causal split into
  2 cp chunks): every per-rank token count is divided by cp; cp - 1 ring steps per layer send one chunk's K
  and V forward (K, V and their gradients backward), each overlapped with one step's attention; the
  gradient reduction and the optimizer shard span dp x cp.
- FP8: the blocks' linear GEMMs at the FP8 peak x gemm_efficiency x FP8_MAMF_RATIO, plus the cast traffic
  (FP8_CAST_BYTES per element of each distinct GEMM input forward, FP8_FUSED_CAST_BYTES where a fused stack's
  norm or activation writes it, and of each output gradient backward; with sequence parallelism the cast
  precedes the all-gather, so it covers the rank's 1/tp of the sequence and the forward gathers move 1 byte per
  element); attention,
  the LM head and the elementwise work stay bf16. MXFP8 (Blackwell): the same, each copy carrying its block
  scales (one byte per 32 elements) wherever it is written, kept, gathered or read by a GEMM. NVFP4 (Blackwell):
  the GEMMs at the FP4 peak (assumed to reach FP8's fraction of it: no FP4 GEMM rate from training runs), each
  cast reading its input twice (an amax pass for the per-tensor scale, then the cast) and writing two half-byte
  copies with one scale byte per 16 elements, the kept activations and the SP gathers 1/2 + 1/16 byte per element
  (GemmFormat.stored_bytes); the first and last blocks some recipes keep in bf16, the random Hadamard transforms
  and stochastic rounding of NVIDIA's recipe are not costed. torchao's linears (Software.fp8_library) cast each
  gathered weight on every micro-batch, forward and backward (torchao_weight_cast_bytes); with fp8_all_gather the
  data-parallel gather moves the FP8 copy (ZeRO-3 also holds its gathered layers in it: Training.gathered_weight_bytes)
  and torchao casts each rank's shard before every gather (CostModel.shard_cast_time). torchao's row-wise recipes
  (spec.GEMM_FORMATS): fp8-rowwise's casts also write and read back a transposed bf16 copy; fp8-rowwise-gw-hp runs
  the weight-gradient GEMM in bf16 and writes one row-wise copy per cast.
- PyTorch-native TP under torch.compile (Software.unfused_across_tp): with tp > 1 the blocks' elementwise work moves
  the eager stack's traffic (Constants.eager_traffic); chosen on the fit rows' CV, scored on a blind set
  (benchmarks/RESULTS.md, "Eighth round" and "Seventeenth blind holdout").
- A stack's host work between steps (Software.step_overhead_s: the optimizer's syncs, loss reporting, the
  framework's loop), paid once per step whatever its size, by the stacks that sync the host every step (spec.SOFTWARE
  says which); read off MLPerf's one-micro-batch Llama 3.1 8B steps (FINDINGS.md section 30). The straggler term
  scales it with the rest of the step.
- The host's time to issue a block (CostModel.block_host_time): the user's figure (Software.block_host_s, measured
  with `flopwise plan host-probe`), else for PyTorch-native eager stacks the probe's figure on this project's CPU for
  the wrappers the layout puts on a block (spec.EAGER_BLOCK_HOST_S: DTensor TP, recomputation, FSDP; declared before
  the twenty-seventh blind set and adopted on it, FINDINGS.md sections 32-33). The host runs ahead of the GPU, so each
  block and micro-batch takes the longer of its GPU work and the host's time (CostModel.launch_wait), the difference
  counted under `host`.
- Inter-node collectives at Constants.network_efficiency of the NIC rate times the group's ranks on one node
  (each ring channel leaves the node through another rank's NIC; CostModel.bus_bandwidth), plus a tree latency of
  2 log2(nodes) NET_HOP_LATENCY_S per bucket of DP_BUCKET_BYTES; stragglers: the expected slowest of N ranks
  whose step times vary with coefficient of variation sigma is about (1 + sigma sqrt(2 ln N)) x the mean
  (the Gaussian extreme-value approximation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from flopwise.errors import ConfigError, LayoutError, PlanError
from flopwise.flops import (
    BLOCK_CHECKPOINTS,
    FLASH_BACKWARD_FLOPS,
    Gemm,
    block_gemms,
    causal_attention_flops,
    hardware_flops_per_token,
    head_gemm,
    model_flops_per_token,
    op_checkpoint_gemms,
    param_counts,
)
from flopwise.hardware import (
    CATALOGUE,
    COLLECTIVE_LATENCY_S,
    NVLINK_BUS_EFFICIENCY,
    Accelerator,
    training_precision,
)
from flopwise.layout import Layout, check_experts
from flopwise.layout import check as check_layout
from flopwise.models.config import ModelConfig
from flopwise.opcount import model_ops
from flopwise.plan import experts as moe
from flopwise.plan import memory as mem
from flopwise.plan.spec import (
    EAGER_BLOCK_HOST_S,
    FULL_PRECISIONS,
    SOFTWARE,
    Cluster,
    GemmFormat,
    Software,
    Training,
    attention_kernel,
    fallback_words,
    falls_back,
    rates_by_class,
    refuse_attention,
    wrapper_key,
)

# FlashAttention-2 reaches 50-73% of A100 peak forward and less backward (Dao 2023, section 4.1), about 0.7
# of what large GEMMs sustain.
FLASH_EFFICIENCY = 0.7
ELEMENTWISE_FWD_PASSES = 2.0  # forward: each kept activation written once, read once
ELEMENTWISE_BWD_PASSES = 3.0  # backward: activation read, its gradient written and read
# Adam step (mixed precision): read fp32 master, grad, m, v (16 B), write master, m, v (12 B) and the
# bf16/fp16 copy (2 B).
OPTIMIZER_BYTES_PER_PARAM = 30.0

# FP8 GEMMs reach a lower fraction of their peak than bf16 ones: max achievable matmul 70.9% (FP8) vs 80.3%
# (bf16) of the dense peak on H100 SXM (stas00/ml-engineering, compute/accelerator/README.md, MAMF table).
FP8_MAMF_RATIO = 0.709 / 0.803
# casting a bf16 tensor for an FP8 GEMM: read 2 bytes, write the FP8 copy and its transpose (1 + 1), per element
FP8_CAST_BYTES = 4.0
# ... where the producer of a GEMM input (a norm, the MLP's activation) writes the FP8 copy and its transpose
# itself (Transformer Engine's LayerNormLinear / LayerNormMLP, torch.compile's fused casts): 1 + 1 bytes, no
# re-read. The attention output (the input of wo) comes from the attention kernel and is cast on its own.
FP8_FUSED_CAST_BYTES = 2.0
# Block-scaled formats (MXFP8, NVFP4, MXFP4: spec.GEMM_FORMATS): the row-wise and the column-wise copy carry their scales
# wherever they are written, kept, gathered or read by a GEMM (GemmFormat.stored_bytes).
FP8_UNFUSED_INPUT = frozenset({"wo"})
FP8_INPUT_SHARED = frozenset({"wk", "wv", "wkv_a"})  # cast once, with wq's (latent attention: wq_a's) input
FP8_ONE_INPUT = frozenset({"w_up", "shared_up"})  # gate and up (count 2) read one input


def torchao_weight_cast_bytes(low: GemmFormat, dtype_bytes: int, fp8_all_gather: bool) -> tuple[float, float]:
    """Bytes moved per block weight element on every micro-batch, forward and backward, by torchao's low-precision
    linears (Software.fp8_library = 'torchao'), which cast the gathered weight in each forward and, having saved it in
    high precision, again in the backward (torchao's matmul_with_hp_or_float8_args since pytorch/ao#920, 2024-10): a
    read of the weight and a write of the cast copy each time, a per-tensor scale's amax one more read first (the
    backward recomputed it until pytorch/ao#2595, 2025-07; torchao's roofline, roofline_utils.py, shares one amax: 5 + 3
    bytes, not 5 + 5), and a row-wise recipe's backward a transposed high-precision copy written and read back (not
    rowwise_with_gw_hp's, whose backward casts per tensor with a scale from the forward's row scales: 3 + 3). With
    fp8_all_gather the shard is cast before each gather instead (CostModel.shard_cast_time) and the backward takes the
    gathered FP8 weight's transposed copy. Under torch.compile the backward's cast writes the transposed layout itself;
    eager torchao copies it once more (2 bytes, not costed). Transformer Engine keeps a step's FP8 weights across its
    micro-batches: not costed."""
    if fp8_all_gather:
        return 0.0, 2 * low.stored_bytes
    once = torchao_cast_once_bytes(low, dtype_bytes)
    return once, once + low.transposed_copy_bytes(dtype_bytes)


def torchao_cast_once_bytes(low: GemmFormat, dtype_bytes: int) -> float:
    """One cast of a high-precision weight by torchao: read it, write the cast copy, and first read it for its amax
    where the scale is per tensor (a row-wise or block scale comes from the row or block the cast kernel reads)."""
    amax = 0.0 if low.axiswise or low.block_scaled else dtype_bytes
    return dtype_bytes + low.stored_bytes + amax

# FA3 / cuDNN fused attention on Hopper, fraction of the dense bf16 peak averaged over forward (~75%) and
# backward (~55%) (Shah et al. 2024); FA2 there (~35% forward) is Constants.fa2_hopper_efficiency
FA3_HOPPER_EFFICIENCY = 0.6


TP_GEMM_GROUPS = {"wq": "qkv", "wk": "qkv", "wv": "qkv", "wo": "wo", "w_up": "w_up", "w_down": "w_down",
                  "shared_up": "w_up", "shared_down": "w_down",  # (an MoE layer's shared expert: a dense MLP)
                  "wq_b": "qkv", "wkv_b": "qkv"}  # (latent attention's up projections, cut by heads)
NET_HOP_LATENCY_S = 7e-6  # one inter-node hop (InfiniBand switch + NIC), NCCL tree: 2 log2(nodes) hops
DP_BUCKET_BYTES = 40e6 * 4  # gradient buckets (Megatron: 40M fp32 elements; DDP: 25 MB)

BREAKDOWN_KEYS = ("compute", "recompute", "bubble", "tp", "ep", "pp", "dp", "optimizer", "cp", "host", "straggler")


@dataclass(frozen=True)
class Constants:
    """The cost model's few fitted constants (issue 14). The defaults are fitted on
    benchmarks/planner_calibration/fit.csv only (benchmarks/planner_fit.py; figures in benchmarks/RESULTS.md)."""

    eager_traffic: float = 2.102  # elementwise HBM traffic of an eager (unfused) stack / a fused one
    # achieved fraction of the NIC rate between nodes (at its upper bound: with each ring's NICs aggregated,
    # FSDP's collectives hide behind compute in nearly every fit row, so the data barely constrains it)
    network_efficiency: float = 1.0
    # coefficient of variation of per-rank step times: ~1% jitter, not fitted (free, it absorbed a uniform few per
    # cent growing with log(GPUs) and made the large-scale rows too slow; benchmarks/planner_fit.py)
    straggler_cv: float = 0.01
    pipeline_instruction_s: float = 0.0272  # DeepSpeed pipeline engine: cost per blocking transfer
    # FlashAttention-2-class kernels on Hopper, fraction of the bf16 peak; fitted well below FA2's ~35% forward:
    # it also absorbs what else PyTorch-native stacks lose on Hopper (FINDINGS.md 3.1)
    fa2_hopper_efficiency: float = 0.2124
    # backward matmuls (dgrad, wgrad, attention backward) at this fraction of the forward's rate: transposed
    # operands and wgrad's long reduction run below the forward's tiles (FlashAttention-2's backward reaches a
    # lower fraction of peak than its forward, Dao 2023 section 4.1)
    backward_efficiency: float = 0.8657


DEFAULT_CONSTANTS = Constants()


def class_efficiency(kernel_class: str, acc: Accelerator | None = None, constants: Constants | None = None) -> float:
    """The fraction of the peak fused attention of `kernel_class` ('fa2' | 'fa3') is costed at on a part that rates
    kernels by class (spec.rates_by_class): FA2's fitted rate or FA3's, never above `acc`'s GEMM efficiency (AMD's
    MI3xx sustain less of their peak in GEMMs than FA3 does of an H100's); `acc` None: uncapped."""
    rate = (constants or DEFAULT_CONSTANTS).fa2_hopper_efficiency if kernel_class == "fa2" else FA3_HOPPER_EFFICIENCY
    return min(rate, acc.gemm_efficiency) if acc is not None else rate


def fa3_over_fa2(constants: Constants | None = None, acc: Accelerator | None = None) -> float:
    """How much faster the cost model takes FA3-class attention to run than FlashAttention-2 on `acc` (None: on a part
    whose GEMMs outrun both, as NVIDIA's Hopper and Blackwell parts)."""
    return class_efficiency("fa3", acc, constants) / class_efficiency("fa2", acc, constants)


def block_wrappers(layout: Layout, recompute: bool | None = None) -> str:
    """The wrappers a PyTorch-native stack puts on a block under `layout`, as plan.host_probe names them: tp
    (DTensor TP), ac (full recomputation; `recompute` overrides whether this block is one of those recomputed) or sac
    (per-op checkpointing, recompute = 'op'), fsdp (FSDP's SHARD_GRAD_OP and FULL_SHARD wrap every block; DDP and
    ZeRO-1 do not); 'eager' for none."""
    ckpt = layout.recompute in BLOCK_CHECKPOINTS if recompute is None else recompute
    kind = "sac" if layout.recompute == "op" else "ac"
    return wrapper_key({name for name, on in (("tp", layout.tp > 1), (kind, ckpt), ("fsdp", layout.zero >= 2)) if on})


@dataclass(frozen=True)
class LayerCost:
    """Seconds for one layer and one micro-batch on one rank."""

    fwd: float
    bwd: float
    recompute: float
    tp: float  # exposed TP collectives, recomputed forward included
    cp: float = 0.0  # exposed ring-attention KV exchange (context parallelism)


@dataclass(frozen=True)
class LayerTerms:
    """Seconds one block adds per micro-batch on one rank: its LayerCost, a mixture's extra expert compute
    (imbalance) and exposed all-to-all, its wait on the host, torchao's shard cast."""

    cost: LayerCost
    expert: float
    a2a: float
    wait: float
    shard_cast: float

    def per_microbatch(self) -> tuple[float, float, float, float, float, float]:
        """(compute, recompute, tp, cp, ep, host wait), the columns of a stage's time."""
        c = self.cost
        return c.fwd + c.bwd + self.expert + self.shard_cast, c.recompute, c.tp, c.cp, self.a2a, self.wait


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
    block_host_s: float = 0.0  # the host's time per block and micro-batch it was costed with (CostModel.block_host_time)

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
            "block_host_s": self.block_host_s,
            "notes": list(self.notes),
        }


def ring_time(kind: str, nbytes: float, n: int, bandwidth: float, latency: float = COLLECTIVE_LATENCY_S) -> float:
    """One ring collective over n ranks: all_reduce moves 2 (n-1)/n of the buffer, all_gather and
    reduce_scatter (n-1)/n, at `bandwidth` (bus bandwidth, bytes/s), plus the call latency."""
    if n <= 1 or nbytes <= 0:
        return 0.0
    factor = {"all_reduce": 2.0, "all_gather": 1.0, "reduce_scatter": 1.0}[kind]
    return factor * (n - 1) / n * nbytes / bandwidth + latency


def loss_bytes(dtype_bytes: int, eager: bool) -> float:
    """HBM bytes per logit of the loss, forward and backward. Fused (a vocab-parallel or fused cross-entropy): read
    the logits, write the fp32 softmax; backward: read it, write the logits' gradient. Eager
    (F.cross_entropy(logits.float()), one kernel per op): the cast to fp32 (read e, write 4) and back in the backward,
    log-softmax reading its input three times (max, sum of exponentials, output) and writing once, the NLL
    gradient written dense, and log-softmax's backward reading that gradient twice and its output once and writing
    once; in fp32 the casts are no-ops. The H200 measured ~60 bytes per logit for the bf16 case (48 counted here;
    benchmarks/RESULTS.md, "Kernels on an H200")."""
    e = dtype_bytes
    if not eager:
        return e + 4 + 4 + e
    casts = 2 * (e + 4) if e != 4 else 0
    return casts + (3 * 4 + 4) + 4 + (3 * 4 + 4)


def even_split(layers: int, pp: int) -> tuple[int, ...]:
    """As even as possible; the remainder goes to the middle stages (the first holds the most
    activations, the last the LM head). With more stages than layers (at most two more: layout.check) the ends
    hold none: the first with one stage more, the first and the last with two, only the embedding and the head, as
    Megatron-Core's account_for_embedding_in_pipeline_split and account_for_loss_in_pipeline_split place them."""
    base, extra = divmod(layers, pp)
    return tuple(base + (1 if 0 < i <= extra else 0) for i in range(pp))


class CostModel:
    """Evaluates layouts of one model on one cluster for one training run; caches per-layer costs."""

    def __init__(self, model: ModelConfig, cluster: Cluster, training: Training,
                 constants: Constants | None = None) -> None:
        self.model = model
        self.cluster = cluster
        self.acc = cluster.accelerator
        refuse_attention(training, self.acc)
        # no FlashAttention-2 on this part: the stack's own fallback, stated (the errors name it)
        self.attention_fallback = falls_back(training, self.acc)
        if self.attention_fallback:
            training = replace(training, attention=attention_kernel(training, self.acc))
        self.training = training
        self.constants = constants or DEFAULT_CONSTANTS
        if training.a2a_overlap and not model.experts:
            raise PlanError("a2a_overlap overlaps the expert all-to-all with compute; this model is dense (no experts): "
                            "drop it")
        if training.dispatcher != "alltoall" and not model.experts:
            raise PlanError(f"dispatcher {training.dispatcher!r} routes an MoE model's tokens; this model is dense (no "
                            f"experts): drop it")
        if training.precision == "bf16" and not self.acc.bf16:
            raise PlanError(f"{self.acc.name} has no bf16 tensor cores (they came with Ampere): use precision fp16, "
                            "as runs on it did")
        self.low = low = training.gemm_format  # FP8 / MXFP8 / NVFP4 / MXFP4 GEMMs in the blocks; None: the dtype
        self.cast_delta = self.low_rate = 0.0
        if low:
            self._refuse_without(low, training.precision)
            # a cast writes a row-wise and a column-wise (transposed) copy with their block scales: its bytes against
            # per-tensor FP8's two 1-byte copies (MXFP8 2/32 more, NVFP4 2 x (1/2 + 1/16) - 2 = 0.875 fewer), and a
            # scale from the tensor's own amax reads the input once more first (NVFP4: + 2 bytes in bf16)
            amax = training.dtype_bytes if low.global_amax else 0.0
            # a row-wise recipe writes a transposed high-precision copy for the column-wise scales and reads it back;
            # with a high-precision weight gradient one row-wise copy, no transposed one (torchao's roofline_utils.py)
            self.cast_delta = (low.cast_copies * low.stored_bytes - 2 + amax
                               + low.transposed_copy_bytes(training.dtype_bytes))
            # no FP4 GEMM rate from training runs: FP4 GEMMs are taken to reach FP8's fraction of their peak
            self.low_rate = getattr(self.acc, low.peak_field) * self.acc.gemm_efficiency * FP8_MAMF_RATIO
        if (training.profile.block_host_s or 0.0) > 0 and self.acc.measured:
            raise ConfigError("block_host_s: a CPU runs its kernels on the host, which is already costed (the "
                              "measured time per op, op_overhead_s); the host time per block is for GPUs")
        self.seq = training.seq_len or model.seq_len
        # fp32 GEMMs run on the CUDA cores unless the script turns TF32 on (tf32): each at its own datasheet rate (a
        # measured CPU's peak is already the fp32 rate); attention keeps its ratio to the GEMMs through self.peak
        self.peak = self._full_precision_peak(training.precision) or self.acc.peak_flops
        self.gemm_rate = self.peak * self.acc.gemm_efficiency
        # an accelerator without a memory-bandwidth figure (a measured CPU) gets no memory-bound time
        self.hbm_rate = self.acc.memory_bandwidth * self.acc.memory_efficiency or float("inf")
        profile = training.profile
        self.ew_factor = self._traffic(profile)
        # train.compile compiles the blocks only: the final norm before the head stays eager
        self.head_ew_factor = self._traffic(SOFTWARE[training.software]) if training.compiled else self.ew_factor
        # the backward's own slowness, already in a measured attention rate (Accelerator.attention_efficiency)
        self.attention_backward_efficiency = self.constants.backward_efficiency
        if self.acc.attention_efficiency > 0 and profile.attention == "flash":  # (unfused attention runs as GEMMs)
            self.attention_rate = self.peak * self.acc.attention_efficiency
            self.attention_backward_efficiency = 1.0
        elif rates_by_class(self.acc):  # Hopper-class tensor cores: the kernel class decides
            self.attention_rate = self.peak * class_efficiency(profile.attention_kernel, self.acc, self.constants)
        else:
            self.attention_rate = self.gemm_rate * FLASH_EFFICIENCY
        # the host time per op where it adds to the step (a measured CPU; a GPU's host runs ahead of its kernels: 0 in
        # the catalogue), for flopwise's own model, whose ops are counted (opcount.model_ops); every micro-batch pays it
        self.ops = (model_ops(model) if self.acc.op_overhead_s > 0 and training.software == "flopwise" else None)
        self.counts = param_counts(model)
        self.gemms = block_gemms(model)
        self.layer_params = mem.layer_params(model)
        self.memory_limit = mem.usable_bytes(self.acc.memory_bytes)
        self._layer_cache: dict[tuple, LayerCost] = {}
        # an MoE model's leading dense blocks (model.dense_layers): their per-layer costs are a dense twin's
        self.dense = (CostModel(model.dense_block(), cluster, replace(training, a2a_overlap=False, dispatcher="alltoall"),
                                constants)
                      if model.dense_layers else None)

    def _traffic(self, profile: Software) -> float:
        """Bytes the profile's elementwise kernels move per planned pass (Software.elementwise_traffic)."""
        return profile.elementwise_traffic or (1.0 if profile.fused_elementwise else self.constants.eager_traffic)

    def elementwise_factor(self, tp: int) -> float:
        """The blocks' elementwise traffic factor at this tensor-parallel degree (Software.unfused_across_tp)."""
        profile = self.training.profile
        if tp > 1 and profile.unfused_across_tp:
            return self._traffic(replace(profile, fused_elementwise=False))
        return self.ew_factor

    # ---- links -----------------------------------------------------------------------------------
    def _full_precision_peak(self, precision: str) -> float:
        """The 4-byte GEMMs' dense rate for fp32 / tf32 (PlanError where the part has none); 0 for other precisions."""
        if precision not in FULL_PRECISIONS:
            return 0.0
        tf32 = precision == "tf32"
        peak = self.acc.full_precision_peak(tf32)
        if peak > 0:
            return peak
        name = self.acc.name
        known = CATALOGUE.get(name) == self.acc  # a catalogue part, not a file that names one
        if tf32:
            other = sorted({training_precision(self.acc)} | ({"fp32"} if self.acc.full_precision_peak(False) else set()))
            use = f"use precision {' or '.join(other)}"
            if known or self.acc.measured:
                raise PlanError(f"{name} has no TF32 tensor cores (NVIDIA's have since Ampere): {use}")
            raise PlanError(f"{name}'s accelerator file gives no tf32_peak_tflops (the dense TF32 tensor-core rate): "
                            f"add it, or {use}")
        raise PlanError(f"{name}'s accelerator file gives no fp32_peak_tflops (fp32 GEMMs with TF32 off run on the "
                        "CUDA cores at that rate): add it, or plan tf32 if the run turns TF32 on")

    def _refuse_without(self, low: GemmFormat, precision: str) -> None:
        """PlanError where the accelerator lacks the tensor cores the format's GEMMs need."""
        def parts(field: str) -> str:  # the catalogue's accelerators that have it, for the message
            return ", ".join(a.name for a in CATALOGUE.values() if getattr(a, field))

        name = self.acc.name
        if low.peak_field == "fp8_peak_flops" and self.acc.fp8_peak_flops <= 0:
            raise PlanError(f"{name} has no FP8 tensor cores: use precision {training_precision(self.acc)}")
        if low.peak_field == "fp4_peak_flops" and self.acc.fp4_peak_flops <= 0:
            raise PlanError(f"{name} has no FP4 tensor cores, only Blackwell's and CDNA 4's have "
                            f"({parts('fp4_peak_flops')}; an accelerator file declares them with fp4_peak_tflops): use "
                            f"precision {'fp8 or mxfp8' if self.acc.block_scaled_fp8 else 'fp8'}")
        if low.global_amax and not self.acc.nvfp4:  # NVFP4: E4M3 block scales under a per-tensor one
            raise PlanError(f"{name}'s FP4 tensor cores take the OCP MX formats, not NVIDIA's NVFP4: use precision "
                            "mxfp4")
        if low.axiswise and self.training.profile.fp8_library != "torchao":
            raise PlanError(f"precision {precision} is a torchao row-wise recipe; the `{self.training.software}` "
                            "profile's FP8 layers are Transformer Engine's, which has none: plan it with --software "
                            "torch-compile or torch-eager, or use precision fp8")
        if self.training.fp8_all_gather and self.model.experts and self.training.profile.fp8_library == "torchao":
            raise PlanError("fp8_all_gather under torchao is costed for dense models (its float8 all-gather wraps "
                            "linear layers' weights, not grouped experts): plan this model without it, or as Megatron "
                            "runs it (--software te: Transformer Engine keeps the experts' weights in FP8 too)")
        if low.axiswise and self.model.experts:
            raise PlanError(f"precision {precision} is costed for dense models (torchao's Float8Linear); this model "
                            "has experts: use precision fp8")
        if low.block_scaled and not self.acc.block_scaled_fp8:
            # the nearest format the part runs: NVFP4 for MXFP4 where its FP4 tensor cores take NVIDIA's scales
            instead = ("nvfp4" if low.peak_field == "fp4_peak_flops" and self.acc.nvfp4 and self.acc.fp4_peak_flops > 0
                       else "fp8 (per-tensor scales)")
            raise PlanError(f"{name} has no block-scaled ({precision.upper()}) tensor cores, only Blackwell's and "
                            f"CDNA 4's have ({parts('block_scaled_fp8')}; an accelerator file declares them with "
                            f"block_scaled_fp8 = true): use precision {instead}")

    def bus_bandwidth(self, span: int, ranks: int = 1, members: int | None = None) -> float:
        """Bus bandwidth of a group of `ranks` ranks spanning `span` consecutive GPUs (inside a node or not); on a
        mesh inside the node (Cluster.intra_link) the group's `members` there set the links it runs over (default:
        `ranks`, or a point-to-point pair for `ranks` 1: pipeline and ring-attention sends; an all-to-all gives its
        own).

        Across nodes a ring collective runs several channels, each leaving a node through a different rank's
        NIC, so the group's bus bandwidth is the NICs of its ranks on one node together (NCCL; a node with one
        100 Gb/s NIC and 8 GPUs reaches ~12 GB/s ring bus bandwidth, not 1/8 of it: nccl-tests issue 196),
        bounded by the NVLink ring inside the node. Groups with one rank per node (DP under TP = 8, pipeline
        sends, all-to-all, which cannot aggregate NICs) get one NIC; the node's other NICs serve the other
        groups running at the same time."""
        gpn = self.cluster.gpus_per_node
        if span <= gpn:
            if self.cluster.intra_bw <= 0:
                raise PlanError(f"{self.acc.name} has no intra-node link bandwidth; give --intra-gbps")
            return self.cluster.intra_link(span, members or max(ranks, 2)) * NVLINK_BUS_EFFICIENCY
        per_node = max(1, min(gpn, ranks * gpn // span))
        net = per_node * self.cluster.inter_bw * self.constants.network_efficiency
        if per_node > 1 and self.cluster.intra_bw > 0:  # the ring's in-node part, over the node's per_node GPUs
            net = min(net, self.cluster.intra_link(per_node, per_node) * NVLINK_BUS_EFFICIENCY)
        return net

    def latency(self, span: int) -> float:
        """Per-call latency of a collective over `span` consecutive GPUs: launch, plus the tree's
        2 log2(nodes) inter-node hops when it leaves the node."""
        nodes = span / self.cluster.gpus_per_node
        return COLLECTIVE_LATENCY_S + (2 * math.log2(nodes) * NET_HOP_LATENCY_S if nodes > 1 else 0.0)

    def ring(self, kind: str, nbytes: float, n: int, bandwidth: float, latency: float = COLLECTIVE_LATENCY_S) -> float:
        """ring_time in this cluster's collective library: gloo's reduce_scatter is all-reduces (PyTorch's fallback,
        pytorch/pytorch#149869), so it moves an all-reduce's bytes there."""
        if kind == "reduce_scatter" and self.acc.collectives == "gloo":
            kind = "all_reduce"
        return ring_time(kind, nbytes, n, bandwidth, latency)

    def bucketed(self, kind: str, nbytes: float, n: int, span: int) -> float:
        """A data-parallel gradient or parameter collective issued in buckets (each pays the latency)."""
        if n <= 1 or nbytes <= 0:
            return 0.0
        buckets = math.ceil(nbytes / DP_BUCKET_BYTES)
        lat = self.latency(span)
        return self.ring(kind, nbytes, n, self.bus_bandwidth(span, n), lat) + (buckets - 1) * lat

    # ---- compute ---------------------------------------------------------------------------------
    def gemm_time(self, m: float, k: float, n: float, batch: float = 1.0, low: bool = False) -> float:
        """Roofline time of `batch` matmuls [m, k] x [k, n] in the training dtype (low: the run's low-precision
        inputs, FP8 or FP4, bf16 output, at that format's rate)."""
        e = self.training.dtype_bytes
        if low and not self.low:
            raise PlanError(f"a low-precision GEMM was asked of a {self.training.precision} plan")
        if low:
            compute = 2.0 * m * k * n * batch / self.low_rate
            traffic = (self.low.stored_bytes * (m * k + k * n) + e * m * n) * batch / self.hbm_rate
        else:
            compute = 2.0 * m * k * n * batch / self.gemm_rate
            traffic = e * (m * k + k * n + m * n) * batch / self.hbm_rate
        return max(compute, traffic)

    def _sharded(self, g: Gemm, tp: int) -> tuple[float, float]:
        k = g.k / tp if g.tp == "row" else g.k
        n = g.n / tp if g.tp == "column" else g.n
        return k, n

    def _gemm_groups(self, tokens: float, tp: int) -> dict[str, float]:
        """Forward times of the GEMM groups a TP collective borders: QKV, output projection, MLP in, MLP out."""
        groups: dict[str, float] = {}
        for g in self.gemms:
            key = TP_GEMM_GROUPS.get(g.name)
            if key is None:  # replicated (router, LFA) or expert GEMMs: not beside a TP collective
                continue
            groups[key] = groups.get(key, 0.0) + g.count * self._block_gemm(g, tokens, tp)
        return groups

    def _block_gemm(self, g: Gemm, tokens: float, tp: int, low: bool | None = None) -> float:
        """Forward time of one of a block's weight GEMMs on one rank (low: in the run's low precision; None: as the
        run's blocks do)."""
        return self.gemm_time(tokens, *self._sharded(g, tp), low=bool(self.low) if low is None else low)

    def _gemm_total(self, tokens: float, tp: int, low: bool) -> float:
        """Forward time of all of one layer's weight GEMMs on one rank."""
        return sum(g.count * self._block_gemm(g, tokens, tp, low) for g in self.gemms)

    def attention_time(self, tp: int, mb: int, cp: int = 1) -> float:
        """Forward time of the attention core (QK^T, softmax, AV) for one layer and micro-batch on one rank
        (context parallel: the load-balanced causal share 1/cp of it)."""
        cfg, s = self.model, self.seq
        heads = math.ceil(cfg.heads / tp)
        # latent attention: its scores over qk_head_dim, its values over head_dim (or padded to qk_head_dim)
        values = self.training.profile.value_head_dim(cfg)
        d = (cfg.qk_head_dim + values) / 2
        if self.training.profile.attention == "flash":  # the layers' mean over full and sliding-window blocks
            windowed = cfg.windowed_layers / cfg.layers
            causal = causal_attention_flops(s, d, heads, mb)
            # a windowed kernel visits the band only; a masked one (flopwise's SDPA) computes every block of the scores
            band = causal_attention_flops(s, d, heads, mb, cfg.window) if self.training.profile.window_kernel else 2 * causal
            return ((1 - windowed) * causal + windowed * band) / cp / self.attention_rate
        return (self.gemm_time(s, cfg.qk_head_dim, s, heads * mb) + self.gemm_time(s, s, values, heads * mb)) / cp

    def _kept_activations(self, tp: int, sp: bool, mb: int, cp: int, recompute: str = "none") -> float:
        """Bytes one layer's kernels write for its backward, as an eager stack keeps them (the elementwise passes run
        over them)."""
        probe = Layout(tp=tp, sp=sp, micro_batch=mb, recompute="none", cp=cp)
        return mem.layer_activation_bytes(self.model, self.training, probe, recompute=recompute, written=True)

    def layer_compute(self, tp: int, sp: bool, mb: int, cp: int = 1) -> dict[str, tuple[float, float]]:
        """(forward, backward) seconds of one layer's kernels for one micro-batch on one rank, by kind: the weight
        GEMMs, the attention core, and the memory-bound rest (norms, activations, residuals, FP8 casts). A profile
        of a step, grouped the same way, checks each (benchmarks/planner_kernels.py, section step)."""
        tokens = self.seq * mb / cp
        gemm = self._gemm_total(tokens, tp, low=bool(self.low))
        # the backward's input- and weight-gradient GEMMs each as much work as the forward's; torchao's
        # rowwise_with_gw_hp runs the weight-gradient one in the training dtype (the roofline is symmetric in m, k, n)
        weight_grad = self._gemm_total(tokens, tp, low=False) if self.low and self.low.hp_weight_grad else gemm
        attn = self.attention_time(tp, mb, cp)
        act = self._kept_activations(tp, sp, mb, cp)
        ew = self.elementwise_factor(tp)
        ew_fwd = ew * ELEMENTWISE_FWD_PASSES * act / self.hbm_rate
        ew_bwd = ew * ELEMENTWISE_BWD_PASSES * act / self.hbm_rate
        if self.low:  # cast each distinct GEMM input forward and each output gradient backward
            fused = self.training.profile.fused_elementwise
            # with sequence parallelism the cast precedes the all-gather: a column-parallel GEMM's input and a
            # row-parallel one's output gradient are cast on this rank's 1/tp of the sequence and gathered in FP8
            # (Transformer Engine; torchao's Float8ColwiseParallel)
            # (torchtitan runs a row-wise recipe with plain TP: it gathers in bf16 and casts the whole sequence)
            shard = tp if sp and tp > 1 and not self.low.axiswise else 1
            weight_fwd, weight_bwd = (torchao_weight_cast_bytes(self.low, self.training.dtype_bytes,
                                                                self.training.fp8_all_gather)
                                      if self.training.profile.fp8_library == "torchao" else (0.0, 0.0))
            for g in self.gemms:
                k, n = self._sharded(g, tp)
                if g.name not in FP8_INPUT_SHARED:  # Q, K, V share one input; so do gate and up (count 2)
                    per = FP8_FUSED_CAST_BYTES if fused and g.name not in FP8_UNFUSED_INPUT else FP8_CAST_BYTES
                    per = (per + self.cast_delta) / (shard if g.tp == "column" else 1)
                    ew_fwd += (1 if g.name in FP8_ONE_INPUT else g.count) * per * tokens * k / self.hbm_rate
                per = (FP8_CAST_BYTES + self.cast_delta) / (shard if g.tp == "row" else 1)
                ew_bwd += g.count * per * tokens * n / self.hbm_rate
                if not g.stored:  # this rank's weights, every micro-batch (MoE experts' grouped GEMMs: not costed)
                    ew_fwd += g.count * weight_fwd * k * n / self.hbm_rate
                    ew_bwd += g.count * weight_bwd * k * n / self.hbm_rate
        attn_bwd = FLASH_BACKWARD_FLOPS if self.training.profile.attention == "flash" else 2.0
        eff = self.constants.backward_efficiency
        parts = {"gemm": (gemm, (gemm + weight_grad) / eff),
                 "attention": (attn, attn_bwd * attn / self.attention_backward_efficiency),
                 "elementwise": (ew_fwd, ew_bwd)}
        if self.ops is not None and not self.training.compiled:  # compiled blocks dispatch fused kernels, uncounted
            parts["dispatch"] = tuple(n * self.acc.op_overhead_s for n in self.ops.block)
        return parts

    def layer_cost(self, tp: int, sp: bool, mb: int, recompute: str, every: int = 1, cp: int = 1) -> LayerCost:
        """Costs of one layer; with recompute = 'full' and `every` = k, averaged over the blocks (one in k
        is recomputed)."""
        key = (tp, sp, mb, recompute, every, cp)
        if key in self._layer_cache:
            return self._layer_cache[key]
        tokens = self.seq * mb / cp
        parts = self.layer_compute(tp, sp, mb, cp)
        attn = parts["attention"][0]
        fwd, bwd = (sum(v[i] for v in parts.values()) for i in (0, 1))
        early_stop = self.training.profile.recompute_early_stop
        if recompute == "full":
            # non-reentrant checkpointing stops before the block's last GEMM (nothing saves its output)
            last = self._gemm_groups(tokens, tp).get("w_down", 0.0) if early_stop else 0.0
            rc = (fwd - last) / every
        elif recompute == "selective":
            s_act = self._kept_activations(tp, sp, mb, cp) - self._kept_activations(tp, sp, mb, cp, "selective")
            rc = attn + self.elementwise_factor(tp) * ELEMENTWISE_FWD_PASSES * s_act / self.hbm_rate
        elif recompute == "op":  # the matmuls it does not keep, the elementwise work between them, unfused attention
            again = op_checkpoint_gemms(self.model)[1]
            rc = sum(self._block_gemm(g, tokens, tp) for g in again)
            o_act = self._kept_activations(tp, sp, mb, cp) - self._kept_activations(tp, sp, mb, cp, "op")
            rc += self.elementwise_factor(tp) * ELEMENTWISE_FWD_PASSES * o_act / self.hbm_rate
            rc += attn if self.training.profile.attention == "unfused" else 0.0
        else:
            rc = 0.0
        tp_time = 0.0
        if tp > 1:
            nbytes = tokens * self.model.hidden * self.training.dtype_bytes
            bw = self.bus_bandwidth(tp, tp)
            if sp:  # under FP8 / FP4 the forward's all-gathers move the low-precision copy with its block scales
                gather = self.ring("all_gather", nbytes, tp, bw)
                one = gather + self.ring("reduce_scatter", nbytes, tp, bw)
                if self.low and not self.low.axiswise:  # a row-wise recipe gathers in bf16 (torchtitan)
                    low_bytes = nbytes * self.low.stored_bytes / self.training.dtype_bytes
                    one_fwd = one - (gather - self.ring("all_gather", low_bytes, tp, bw))
                else:
                    one_fwd = one
            else:
                one = one_fwd = self.ring("all_reduce", nbytes, tp, bw)
            if self.training.profile.tp_overlap:
                # pipelined with the adjacent GEMM in tp chunks: one chunk exposed, the rest behind the GEMM
                # (the smallest of the four GEMM groups a collective borders bounds what can hide)
                hidden = min(self._gemm_groups(tokens, tp).values())
                one, one_fwd = (c / tp + max(0.0, c * (tp - 1) / tp - hidden) for c in (one, one_fwd))
            # two collectives (attention, MLP) in the forward and two in the backward, two more in a
            # recomputed forward
            # the forward collectives a recomputation runs again: per-op checkpointing keeps no collective's output
            # (its policy keeps matmuls and attention), so like full recomputation it re-gathers the column-parallel
            # inputs and re-reduces the attention output, and stops before the last one (measured on gloo)
            again = (((1 if early_stop else 2) / (every if recompute == "full" else 1))
                     if recompute in BLOCK_CHECKPOINTS else 0)
            tp_time = one_fwd * (2 + again) + 2 * one
        cp_time = 0.0
        if cp > 1:  # ring: cp - 1 steps, each hidden behind one step's share of the attention
            kv = (tokens * self.model.kv_heads / tp * (self.model.qk_head_dim + self.training.profile.value_head_dim(
                self.model)) * self.training.dtype_bytes)
            bw, lat = self.bus_bandwidth(tp * cp), self.latency(tp * cp)
            step_f = max(0.0, kv / bw + lat - attn / cp)
            step_b = max(0.0, 2 * kv / bw + lat - 2 * attn / cp)  # K, V and dK, dV
            cp_time = (cp - 1) * (step_f + step_b + (step_f / every if recompute == "full" else 0.0))
        cost = LayerCost(fwd, bwd, rc, tp_time, cp_time)
        self._layer_cache[key] = cost
        return cost

    def head_time(self, tp: int, mb: int, cp: int = 1) -> tuple[float, float]:
        """(forward + backward compute, TP comm) of the final norm, LM head and loss."""
        tokens = self.seq * mb / cp
        k, n = self._sharded(head_gemm(self.model), tp)
        gemm = 3.0 * self.gemm_time(tokens, k, n)
        e = self.training.dtype_bytes
        ew = tokens * n * loss_bytes(e, self.training.profile.eager_loss) / self.hbm_rate
        ew += 5.0 * self.head_ew_factor * tokens * self.model.hidden * e / self.hbm_rate  # final norm fwd + bwd
        comm = 0.0
        if (
            tp > 1
        ):  # vocab-parallel cross-entropy: max, sum-exp and target logit all-reduces (s b floats each)
            comm = 3 * self.ring("all_reduce", tokens * 4, tp, self.bus_bandwidth(tp, tp))
        dispatch = sum(self.ops.rest) * self.acc.op_overhead_s if self.ops is not None else 0.0
        return gemm + ew + dispatch, comm

    def embedding_time(self, tp: int, sp: bool, mb: int, cp: int = 1) -> float:
        """Vocab-parallel embedding: one all-reduce (or reduce-scatter with SP) of s b h in the forward."""
        if tp == 1:
            return 0.0
        nbytes = self.seq * mb / cp * self.model.hidden * self.training.dtype_bytes
        kind = "reduce_scatter" if sp else "all_reduce"
        return self.ring(kind, nbytes, tp, self.bus_bandwidth(tp, tp))

    # ---- memory ----------------------------------------------------------------------------------
    def stage_params(self, layout: Layout, stage: int, layers: int, dense: int = 0) -> float:
        """Parameters held by one rank of pipeline stage `stage` (before ZeRO sharding), `dense` of its `layers` an
        MoE model's leading dense blocks."""
        tp, p = layout.tp, layout.pp
        params = ((layers - dense) * self.layer_params.per_rank(tp)
                  - moe.expert_params_elsewhere(self.model, layout, layers - dense))
        if dense:
            params += dense * self.dense.layer_params.per_rank(tp)
        emb = self.counts.embedding / tp
        if stage == 0:
            params += emb
        if stage == p - 1:
            params += self.model.hidden  # final norm
            if p > 1 or not self.model.tie_embeddings:
                params += emb  # the LM head (a tied copy on the last stage when pipelined, as Megatron does)
        return params

    def stage_memory(self, layout: Layout, stage: int, layers: int, microbatches: int,
                     dense: int = 0) -> dict[str, float]:
        """Bytes per rank of pipeline stage `stage` holding `layers` blocks, `dense` of them an MoE model's leading
        dense ones."""
        t = self.training
        params = self.stage_params(layout, stage, layers, dense)
        autocast = t.profile.autocast_weights and t.dtype_bytes < 4
        # ZeRO and FSDP shard the non-expert weights over dp x cp (context-parallel ranks hold the same weights);
        # under autocast the model's own weights and gradients are fp32 and the optimizer keeps no master copy
        out = moe.model_states(self.model, "fp32" if autocast else t.precision, layout, params, layers - dense,
                               t.profile)
        out["weight_copies"] = params * t.dtype_bytes if autocast else 0.0  # autocast's casts, saved for backward
        kinds = [(layers - dense, self.model)] + ([(dense, self.dense.model)] if dense else [])
        out["activations"] = mem.in_flight(layout, stage, microbatches) * sum(
            n * mem.mean_layer_activation_bytes(cfg, t, layout) for n, cfg in kinds)
        # one layer's activations alive while it is recomputed in the backward (no saved tensor: a part of its own)
        out["recompute_layer"] = (max(mem.layer_activation_bytes(cfg, t, layout, recompute="none") for n, cfg in kinds if n)
                                  if layout.recompute in BLOCK_CHECKPOINTS and layers else 0.0)
        logits = 0.0
        if stage == layout.pp - 1:
            n = mem.in_flight(layout, stage, microbatches) if layout.schedule == "gpipe" else 1
            logits = n * (
                mem.logits_bytes(self.model, t, layout) + mem.final_norm_bytes(self.model, t, layout)
            )
        out["logits"] = logits
        out["loss_backward"] = mem.loss_backward_bytes(self.model, t, layout) if stage == layout.pp - 1 else 0.0
        other = mem.RESERVED_BYTES
        if layout.zero >= 3:  # gathered full parameters of the current and the prefetched layer (experts: this rank's)
            gathered = self.layer_params.per_rank(layout.tp) - moe.expert_params_not_gathered(self.model, layout)
            if dense:  # a leading dense block's SwiGLU may be the larger
                gathered = max(gathered, self.dense.layer_params.per_rank(layout.tp))
            other += 2 * gathered * t.gathered_weight_bytes
        out["other"] = other
        out["total"] = sum(out.values())
        return out

    # ---- data parallelism --------------------------------------------------------------------------
    def dp_time(self, layout: Layout, lc: LayerCost, layers: int, local: float, m: int,
                moe_layers: int | None = None) -> float:
        """Exposed data-parallel / ZeRO communication per step over a stage of `layers` layers holding `local`
        parameters per rank; the group is dp x cp ranks (hybrid: ZeRO inside dp_shard x cp of them). Expert
        weights (ep > 1; of `moe_layers` of the layers, default all) are reduced, and under ZeRO-3 gathered, only over
        the ep_dp x cp ranks that hold the same experts (flopwise.parallel.parallelize), in collectives of their own
        beside the dense ones. ZeRO-3's per-layer gathers are costed as the MoE block's on every layer."""
        moe_layers = layers if moe_layers is None else moe_layers
        t, tp, cp = self.training, layout.tp, layout.cp
        dp, shard = layout.dp * cp, layout.shard_degree * cp
        # fp16 gradients are reduced in fp16, fp32 ones in fp32; bf16 ones as the stack does (fp32: Megatron, FSDP)
        grad_bytes = 4 if t.precision in FULL_PRECISIONS else {"fp16": 2}.get(t.precision, t.profile.grad_reduce_bytes)
        e, g = t.dtype_bytes, t.gathered_weight_bytes  # the blocks' weights may be gathered in FP8, the rest not
        span = tp * dp
        full_span = span
        groups = 1
        if layout.zero and shard < dp:  # hybrid: ZeRO inside groups of `shard`, all-reduce across them
            groups, dp, span = dp // shard, shard, tp * shard
        # this rank's experts per layer, and the group that holds the same ones (ep consecutive dp ranks apart)
        apart = moe.experts_apart(layout)
        expert_layer = moe.expert_params_per_rank(self.model, layout) if apart else 0.0
        ep_dp = layout.expert_dp
        dense_layer = self.layer_params.per_rank(tp) - (moe.expert_params_per_layer(self.model) / tp if apart else 0.0)
        dense_local = local - moe_layers * expert_layer

        def replicas(params: float) -> float:  # the all-reduce of a 1/shard gradient shard across groups
            if groups == 1:
                return 0.0
            return self.bucketed("all_reduce", params / dp * grad_bytes, groups, tp * dp * groups)

        def both(kind: str, dense: float, experts: float, nbytes: int) -> float:
            return (self.bucketed(kind, dense * nbytes, dp, span)
                    + self.bucketed(kind, experts * nbytes, ep_dp, full_span))

        window_b = lc.bwd * layers  # one micro-batch's backward on the stage
        window_f = lc.fwd * layers
        overlap = layout.zero >= t.profile.overlap_from_zero
        experts = moe_layers * expert_layer
        if layout.zero == 0:
            red = both("all_reduce", dense_local, experts, grad_bytes)
            return max(0.0, red - window_b) if overlap else red
        if layout.zero in (1, 2):
            red = both("reduce_scatter", dense_local, experts, grad_bytes) + replicas(dense_local)
            # the blocks' weights as gathered (FP8 or MXFP8 under fp8_all_gather); the embedding, LM head and final norm
            # in the training dtype (gathered with them in one pass where the two are the same)
            blocks = dense_local if g == e else min(dense_local, layers * dense_layer)
            gat = both("all_gather", blocks, experts, g) + self.bucketed("all_gather", (dense_local - blocks) * e, dp, span)
            return (max(0.0, red - window_b) + max(0.0, gat - window_f)) if overlap else red + gat
        # ZeRO-3 / FSDP: per layer and micro-batch, the prefetched all-gather hides behind the layer's forward,
        # the backward's re-gather and the reduce-scatter (and HSDP's all-reduce) behind its backward
        bw, lat = self.bus_bandwidth(span, dp), self.latency(span)
        ebw, elat = self.bus_bandwidth(full_span, ep_dp), self.latency(full_span)
        ag = self.ring("all_gather", dense_layer * g, dp, bw, lat) + self.ring(
            "all_gather", expert_layer * g, ep_dp, ebw, elat)
        rs = self.ring("reduce_scatter", dense_layer * grad_bytes, dp, bw, lat) + replicas(dense_layer) + self.ring(
            "reduce_scatter", expert_layer * grad_bytes, ep_dp, ebw, elat)
        rest = max(0.0, dense_local - layers * dense_layer)  # embedding, LM head, final norm: gathered once, exposed
        edge = self.ring("all_gather", rest * e, dp, bw, lat) + self.ring(
            "reduce_scatter", rest * grad_bytes, dp, bw, lat) + replicas(rest)
        if not overlap:
            return m * (layers * (2 * ag + rs) + edge)
        exposed = max(0.0, ag - lc.fwd) + max(0.0, ag + rs - lc.bwd - lc.recompute)
        return m * (layers * exposed + ag + rs + edge)

    # ---- the whole step --------------------------------------------------------------------------
    def block_host_time(self, layout: Layout) -> float:
        """Seconds the host needs to issue one block's work for one micro-batch, forward and backward: the user's or
        profile's figure (Software.block_host_s), else a PyTorch-native eager stack's for the wrappers `layout` puts on
        its blocks (spec.EAGER_BLOCK_HOST_S, on a GPU: a measured CPU's host time is its op_overhead_s), else 0. Taken
        from the layout as given, before `unsharded`: FSDP wraps the blocks even over a single data-parallel rank."""
        profile = self.training.profile
        if profile.block_host_s is not None:
            return profile.block_host_s
        if not profile.eager_block_host or self.acc.measured:
            return 0.0
        plain = EAGER_BLOCK_HOST_S[block_wrappers(layout, recompute=False)]
        if layout.recompute == "op":  # per-op checkpointing on every block (its dispatch mode runs on every op)
            return EAGER_BLOCK_HOST_S[block_wrappers(layout)]
        if layout.recompute != "full":
            return plain
        # one block in recompute_every is checkpointed: the mean over the blocks
        return plain + (EAGER_BLOCK_HOST_S[block_wrappers(layout, recompute=True)] - plain) / layout.recompute_every

    def shard_cast_time(self, layout: Layout, microbatches: int) -> float:
        """Seconds per layer and micro-batch torchao spends casting this rank's shard of the block weights to FP8 before
        each gather under fp8_all_gather (WeightWithDynamicFloat8CastTensor's pre-all-gather cast, torchao_cast_once_bytes):
        ZeRO-3 gathers in every forward and again in every backward, ZeRO-1/2 once per step. Each weight's amax
        all-reduce (without torchtitan's precompute_float8_dynamic_scale_for_fsdp) is not costed."""
        t = self.training
        if not (t.fp8_all_gather and t.profile.fp8_library == "torchao" and layout.zero):
            return 0.0
        gathers = 2.0 if layout.zero >= 3 else 1.0 / microbatches
        shard = self.layer_params.per_rank(layout.tp) / (layout.shard_degree * layout.cp)
        return gathers * torchao_cast_once_bytes(self.low, t.dtype_bytes) * shard / self.hbm_rate

    def layer_gpu_time(self, layout: Layout, lc: LayerCost | None = None) -> float:
        """One layer's GPU work per micro-batch on one rank: its kernels, recomputation, exposed TP and CP
        collectives, and a mixture's expert work and all-to-all (what the host's time per block is set against)."""
        lc = lc or self.layer_cost(layout.tp, layout.sp, layout.micro_batch, layout.recompute, layout.recompute_every,
                                   layout.cp)
        moe_comp, moe_a2a = self.moe_terms(layout, lc)
        return lc.fwd + lc.bwd + moe_comp + lc.recompute + lc.tp + lc.cp + moe_a2a

    @staticmethod
    def launch_wait(host_s: float, layer_gpu_s: float) -> float:
        """Seconds a layer's GPU work of `layer_gpu_s` per micro-batch waits on a host that needs `host_s` to issue
        it: the host runs ahead, so only a block it needs longer for than the GPU is held up."""
        return max(0.0, host_s - layer_gpu_s)

    def layer_terms(self, layout: Layout, microbatches: int, host_s: float) -> LayerTerms:
        """One of this model's blocks per micro-batch on one rank, for a step of `microbatches` whose host needs
        `host_s` per block."""
        lc = self.layer_cost(layout.tp, layout.sp, layout.micro_batch, layout.recompute, layout.recompute_every,
                             layout.cp)
        if layout.etp and self.model.experts and not self.model.shared_ffn:
            # MoE parallel folding: the expert layer runs on each rank's own tokens, so of a block's two TP collective
            # sites (attention, MLP) only the attention's is left
            lc = replace(lc, tp=lc.tp / 2)
        expert, a2a = self.moe_terms(layout, lc)
        wait = self.launch_wait(host_s, self.layer_gpu_time(layout, lc)) + moe.moe_host_time(self, layout)
        return LayerTerms(lc, expert, a2a, wait, self.shard_cast_time(layout, microbatches))

    def moe_terms(self, layout: Layout, lc: LayerCost) -> tuple[float, float]:
        """(extra expert compute of the busiest rank, exposed all-to-all) per MoE block and micro-batch; an overlapped
        all-to-all (Training.a2a_overlap) hides behind the block's own forward and backward compute."""
        expert, a2a = moe.moe_layer_time(self, layout, self.training.expert_imbalance)
        if self.training.a2a_overlap:
            a2a = max(0.0, a2a - (lc.fwd + lc.bwd + expert))
        return expert, a2a

    def dense_per_rank(self, layout: Layout, split: tuple[int, ...]) -> tuple[int, ...]:
        """How many of each pipeline rank's layers are the model's leading dense blocks (they fill the first chunks)."""
        return layout.rank_leading_layers(split, self.model.dense_layers)

    def microbatches(self, layout: Layout) -> int:
        return self.check(layout)

    def block_forward_time(self, layout: Layout) -> float:
        """One transformer block's planned forward for one micro-batch on one rank (the track record's small-block
        rule compares it with the host's time to launch the block's kernels)."""
        return self.layer_cost(layout.tp, layout.sp, layout.micro_batch, layout.recompute, layout.recompute_every,
                               layout.cp).fwd

    def unsharded(self, layout: Layout) -> Layout:
        """A ZeRO stage over a single data-parallel rank (dp = cp = 1: a pure TP / pipeline layout) shards nothing:
        DeepSpeed and Megatron run it as plain training, so other stacks' layouts are costed with zero = 0;
        flopwise's trainer refuses it (flopwise.layout.check)."""
        if self.training.software != "flopwise" and layout.zero and layout.dp * layout.cp == 1 and not layout.dp_shard:
            return layout.replace(zero=0)
        return layout

    def check(self, layout: Layout) -> int:
        """Raise LayoutError when the layout cannot run (flopwise.layout.check, the trainer's check, on this
        cluster's GPUs, relaxed where the profile's stack allows fewer micro-batches than stages); return the number
        of micro-batches.

        Context parallelism, and FSDP / ZeRO-2/3 under pipeline parallelism (torchtitan and KempnerForge run
        FSDP2 inside each stage, gathering per micro-batch), are costed for other trainers (software profiles
        other than flopwise's own, whose trainer runs neither): the rest of the layout is checked on the cp-th
        share of the GPUs and of the sequence, with ZeRO-1 in place of ZeRO-2/3 under pipelining."""
        asked, layout = layout, self.unsharded(layout)
        cp = layout.cp
        if self.training.fp8_all_gather and not layout.zero:
            why = ("a single data-parallel rank (dp x cp = 1) shards nothing: use dp x cp > 1" if asked.zero else
                   "it shards none: set zero >= 1")
            raise LayoutError("fp8_all_gather is the FP8 gather of sharded weights (FSDP / ZeRO over more than one "
                              f"rank); {asked.short()}: {why}, or drop fp8_all_gather")
        if layout.recompute == "op" and not self.training.profile.op_checkpoint:
            raise LayoutError(f"recompute = 'op' is per-op selective checkpointing as PyTorch-native stacks run it "
                              f"(torchtitan, flopwise's trainer); the {self.training.software} profile has no such "
                              "mode: use selective or full")
        if self.training.software == "flopwise":
            return check_layout(layout, self.model, self.training.global_batch, self.seq, self.cluster.gpus)
        probe = layout
        if cp > 1:
            if self.seq % (2 * cp):
                raise LayoutError(f"context parallelism needs seq_len ({self.seq}) divisible by 2 x cp ({2 * cp})")
            if self.cluster.gpus % cp:
                raise LayoutError(f"cp = {cp} must divide the {self.cluster.gpus} GPUs")
            if self.training.profile.attention != "flash":
                why = (f" ({fallback_words(self.training, self.acc)}; --attention flash if the run had a fused kernel)"
                       if self.attention_fallback else "")
                raise LayoutError(f"context parallelism needs a fused (flash) attention kernel{why}")
            # ZeRO shards over dp x cp ranks, so a ZeRO layout with dp = 1 is still sharded
            probe = layout.replace(cp=1, zero=layout.zero if layout.shard_degree > 1 else 0)
        if probe.pp > 1 and probe.zero >= 2:
            probe = probe.replace(zero=1)
        if layout.etp:  # Megatron's MoE parallel folding: its own expert check, the rest as without experts split
            check_experts(layout, self.model)
            probe = probe.replace(etp=0, ep=1)
        return check_layout(probe, self.model, self.training.global_batch, self.seq // cp, self.cluster.gpus // cp,
                            fewer_microbatches=self.training.profile.fewer_microbatches_than_stages)

    def evaluate(self, layout: Layout, split: tuple[int, ...] | None = None) -> Plan:
        """Step time, memory and cost of `layout` with `split` (layers per pipeline stage, pp x vpp
        entries; default: the layout's, else as even as possible)."""
        cfg, t = self.model, self.training
        host_s = self.block_host_time(layout)
        asked = layout  # what the plan reports: a ZeRO stage over one rank is the run's, though it shards nothing
        layout = self.unsharded(layout)
        split = tuple(split or layout.split or even_split(cfg.layers, layout.stages))
        layout = layout.replace(split=split)
        m = self.check(asked.replace(split=split))  # as asked: check unshards it, and its refusals name it so
        pp_layers = layout.rank_layers(split)
        tp, sp, mb, p, v = layout.tp, layout.sp, layout.micro_batch, layout.pp, layout.vpp
        cp = layout.cp
        head_compute, head_comm = self.head_time(tp, mb, cp)
        emb_comm = self.embedding_time(tp, sp, mb, cp)
        main = self.layer_terms(layout, m, host_s)
        lc = main.cost
        dense = self.dense_per_rank(layout, split)
        kinds = (main, self.dense.layer_terms(layout, m, host_s)) if self.dense else (main,)

        # per-micro-batch time of each stage: (compute, recompute, tp, cp, ep, the blocks' wait on the host)
        per_block = [kind.per_microbatch() for kind in kinds]
        stages = []
        for i, n in enumerate(pp_layers):
            counts = (n - dense[i], dense[i])[:len(kinds)]
            comp, rc, tpc, cpc, epc, waitc = (sum(c * terms[j] for c, terms in zip(counts, per_block, strict=True))
                                              for j in range(len(per_block[0])))
            if i == 0:
                tpc += emb_comm
            if i == p - 1:
                comp += head_compute
                tpc += head_comm
            stages.append((comp, rc, tpc, cpc, epc, waitc))
        totals = [sum(s) for s in stages]
        slowest = max(range(p), key=lambda i: totals[i])
        t_max = totals[slowest]
        if layout.schedule == "interleaved":
            pipeline = m * t_max + (sum(totals) - t_max) / v
        else:
            pipeline = (m - 1) * t_max + sum(totals)
        comp, rc, tpc, cpc, epc, waitc = stages[slowest]
        breakdown = {"compute": m * comp, "recompute": m * rc, "bubble": pipeline - m * t_max, "tp": m * tpc,
                     "ep": m * epc}

        # pipeline point-to-point: scatter s b h / t across the link, all-gather it inside the TP group
        pp_time = 0.0
        if p > 1:
            nbytes = self.seq * mb / cp * cfg.hidden * t.dtype_bytes
            span = tp * cp * layout.dp * p
            one = nbytes / tp / self.bus_bandwidth(span) + self.latency(span)
            if tp > 1 and not sp:
                one += self.ring("all_gather", nbytes, tp, self.bus_bandwidth(tp, tp))
            if t.profile.pipeline == "deepspeed":  # blocking transfers, one pipeline instruction at a time
                one += self.constants.pipeline_instruction_s
            pp_time = (2 * m * v + 2 * (p - 1)) * one
        breakdown["pp"] = pp_time

        # data parallel / ZeRO over the largest stage's parameters; context-parallel ranks join the group
        dp, shard = layout.dp * cp, layout.shard_degree * cp
        stage_params = [self.stage_params(layout, i, n, dense[i]) for i, n in enumerate(pp_layers)]
        local = max(stage_params)
        big = stage_params.index(local)
        # (the expert share of `local`: its own stage's MoE blocks)
        breakdown["dp"] = (self.dp_time(layout, lc, pp_layers[slowest], local, m, pp_layers[big] - dense[big])
                           if dp > 1 else 0.0)
        opt_params = local
        if layout.zero >= 1:  # the optimizer shard: dense weights over dp_shard x cp, experts over ep_dp x cp
            experts = ((pp_layers[big] - dense[big]) * moe.expert_params_per_rank(cfg, layout)
                       if moe.experts_apart(layout) else 0.0)
            opt_params = (local - experts) / shard + experts / layout.expert_dp
        opt_bytes = 28.0 if t.precision in FULL_PRECISIONS else OPTIMIZER_BYTES_PER_PARAM
        breakdown["optimizer"] = opt_params * opt_bytes / self.hbm_rate
        breakdown["cp"] = m * cpc
        # once per step, whatever its size (Software.step_overhead_s), and the blocks' wait on the host per micro-batch
        # (Software.block_host_s); the straggler term below scales them too
        breakdown["host"] = t.profile.step_overhead_s + m * waitc
        # the slowest of N ranks sets the pace of every synchronising collective
        n = self.cluster.gpus
        sigma = self.constants.straggler_cv
        breakdown["straggler"] = sigma * math.sqrt(2 * math.log(n)) * sum(breakdown.values()) if n > 1 else 0.0

        step = sum(breakdown.values())
        tokens_per_step = t.global_batch * self.seq
        tps_gpu = tokens_per_step / step / self.cluster.gpus
        mfu = tps_gpu * model_flops_per_token(cfg, self.seq) / self.acc.peak_flops
        hfu = tps_gpu * hardware_flops_per_token(cfg, layout.recompute, self.seq) / self.acc.peak_flops
        memory = [self.stage_memory(layout, i, n, m, dense[i]) for i, n in enumerate(pp_layers)]
        limit = self.memory_limit
        seconds = t.tokens / (tps_gpu * self.cluster.gpus) if t.tokens else 0.0
        return Plan(
            layout=asked.replace(split=split),
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
            block_host_s=host_s,
        )
