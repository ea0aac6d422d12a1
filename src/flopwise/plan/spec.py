"""What the planner is asked about: the cluster and the training run. The layout is flopwise.layout's
(the one vocabulary the trainer uses too)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cache

from flopwise.errors import ConfigError
from flopwise.hardware import Accelerator

# fp8: the transformer blocks' linear-layer GEMMs in FP8 (Transformer Engine, torchao Float8); attention, the LM head,
# elementwise work, master weights and optimizer state as in bf16 training. fp8-rowwise: the same GEMMs with one scale
# per row of each operand (torchao's `rowwise` recipe, torchtitan's --float8.recipe_name rowwise). fp8-rowwise-gw-hp:
# torchao's `rowwise_with_gw_hp`, the forward and input-gradient GEMMs as fp8-rowwise, the weight-gradient GEMM in bf16
# (torchao's Float8LinearConfig.from_recipe_name; in its roofline, roofline_utils.py). mxfp8: the same
# GEMMs in FP8 with one power-of-two scale per 32 elements (the OCP microscaling format; Transformer Engine's MXFP8
# recipe, torchao's MX formats), which only Blackwell's tensor cores consume (hardware.Accelerator.block_scaled_fp8).
# nvfp4: the same GEMMs (forward, data and weight gradients) in NVIDIA's 4-bit format, E2M1 values with one E4M3 scale
# per 16 elements and a per-tensor FP32 scale (NVIDIA 2025, "Pretraining Large Language Models with NVFP4", arXiv
# 2509.25149; Transformer Engine's NVFP4BlockScaling), at the FP4 tensor-core rate
# (hardware.Accelerator.fp4_peak_flops). mxfp4: the same GEMMs in the OCP microscaling 4-bit format, E2M1 values with
# one power-of-two scale per 32 elements and no per-tensor scale (AMD's MLPerf v6.0 Llama 3.1 8B recipe on CDNA 4,
# Transformer Engine's MXFP4 with Hadamard transforms), at the FP4 rate of parts whose tensor cores take MX scales
# (block_scaled_fp8). fp32: IEEE fp32 GEMMs, PyTorch's default
# (torch.backends.cuda.matmul.allow_tf32 is False since 1.12), at the FP32 (non-tensor) rate; tf32: fp32 weights and
# activations with TF32 tensor-core GEMMs (a script that sets allow_tf32 or
# torch.set_float32_matmul_precision("high")), at the TF32 rate (hardware.Accelerator.fp32_peak_flops,
# tf32_peak_flops).
PRECISIONS = ("bf16", "fp16", "fp32", "tf32", "fp8", "fp8-rowwise", "fp8-rowwise-gw-hp", "mxfp8", "nvfp4", "mxfp4")
FULL_PRECISIONS = frozenset({"fp32", "tf32"})  # 4-byte weights, gradients and activations


@dataclass(frozen=True)
class GemmFormat:
    """How a low-precision recipe feeds the blocks' GEMMs: each cast copy's bytes per element, its block scales'
    bytes per element, the Accelerator field holding the tensor-core peak its GEMMs run at, and whether the tensor
    cores must take block scales (Accelerator.block_scaled_fp8)."""

    element_bytes: float
    scale_bytes: float
    peak_field: str  # 'fp8_peak_flops' | 'fp4_peak_flops'
    block_scaled: bool = False
    # a per-tensor scale computed from the tensor itself: its amax is reduced before the cast, so the cast reads its
    # input once more (a fused producer saves the write of the high-precision copy, not that read)
    global_amax: bool = False
    # scales along one axis (row-wise): the backward's copy is scaled along the other axis, so each cast also writes a
    # transposed high-precision copy and reads it back (unless hp_weight_grad), and the weights, gathered in high
    # precision, are cast on every micro-batch (torchao's kernel sequence for its rowwise recipe,
    # torchao/testing/training/roofline_utils.py)
    axiswise: bool = False
    # the weight-gradient GEMM in the training dtype, from the saved high-precision input and the high-precision output
    # gradient (torchao's rowwise_with_gw_hp): the other two GEMMs need one row-wise copy of each activation and output
    # gradient (no column-wise copy, so no transposed copy), and the backward's weight cast takes a per-tensor scale
    # from the forward's row scales (no amax pass, no transposed copy)
    hp_weight_grad: bool = False

    @property
    def stored_bytes(self) -> float:
        """Bytes per element of one cast copy as it is kept or sent: the values and their block scales."""
        return self.element_bytes + self.scale_bytes

    @property
    def cast_copies(self) -> int:
        """Copies a cast of an activation or output gradient writes: row-wise for one GEMM, column-wise for the
        weight-gradient GEMM, which a high-precision weight gradient does not need."""
        return 1 if self.hp_weight_grad else 2

    def transposed_copy_bytes(self, dtype_bytes: int) -> float:
        """Bytes a cast moves beyond the cast itself for the transposed high-precision copy an axis-wise recipe writes
        for its column-wise scales and reads back (0 for the others)."""
        return 2.0 * dtype_bytes if self.axiswise and not self.hp_weight_grad else 0.0


GEMM_FORMATS = {
    # per-tensor scales; the activations' and gradients' casts costed as delayed scaling (from the amax history: no
    # pass before the cast), current scaling's amax pass not costed for them (the calibrated runs mix both); torchao's
    # weight casts pay theirs (cost.torchao_weight_cast_bytes)
    "fp8": GemmFormat(1.0, 0.0, "fp8_peak_flops"),
    # one fp32 scale per row of K elements (4 / K bytes per element: left out); its GEMMs are taken at tensorwise
    # FP8's rate, as torchao's roofline takes them; torchao's recipe, for dense models
    "fp8-rowwise": GemmFormat(1.0, 0.0, "fp8_peak_flops", axiswise=True),
    "fp8-rowwise-gw-hp": GemmFormat(1.0, 0.0, "fp8_peak_flops", axiswise=True, hp_weight_grad=True),
    # one E8M0 byte per 32 elements (OCP Microscaling spec v1.0)
    "mxfp8": GemmFormat(1.0, 1 / 32, "fp8_peak_flops", block_scaled=True),
    # 4-bit values, one E4M3 byte per 16 elements (FP4 tensor cores take their scales by design), and an FP32
    # per-tensor scale from the tensor's amax (NVIDIA 2025, arXiv 2509.25149, section 2)
    "nvfp4": GemmFormat(0.5, 1 / 16, "fp4_peak_flops", global_amax=True),
    # 4-bit values, one E8M0 byte per 32 elements, no per-tensor scale (OCP Microscaling spec v1.0)
    "mxfp4": GemmFormat(0.5, 1 / 32, "fp4_peak_flops", block_scaled=True),
}
LOW_PRECISIONS = frozenset(GEMM_FORMATS)
# the attention core: 'flash' fused (FlashAttention, SDPA, cuDNN: no s^2 tensors), of the profile's kernel class
# (Software.attention_kernel) or of a stated one, 'fa2' (FlashAttention-2, SDPA's flash backend) | 'fa3' (FlashAttention-3,
# cuDNN's fused attention: SDPA's cuDNN backend, Transformer Engine's FusedAttention) | 'unfused' (scores, softmax and
# dropout as tensors of their own: Megatron before flash attention, Hugging Face models' eager attention)
FLASH_CLASSES = ("fa2", "fa3")
ATTENTION_KERNELS = ("flash", *FLASH_CLASSES, "unfused")
# MoE token dispatchers: Megatron's alltoall (one copy of a token per expert it visits), and DeepEP's internode
# kernels and HybridEP, which send a token once per destination node and fan it out over NVLink there (plan/experts.py)
DISPATCHERS = ("alltoall", "deepep", "hybridep")


@dataclass(frozen=True)
class Software:
    """Facts about the trainer that runs a layout, which the cost and memory model depend on."""

    attention: str  # 'flash': fused attention, no s^2 activations | 'unfused': softmax + dropout kernels
    dropout: bool  # dropout after attention and MLP (GPT-style)
    fused_norm: bool  # the norm kernel keeps only its input (apex/Megatron) vs PyTorch's decomposed RMSNorm
    overlap_from_zero: int  # ZeRO stages from this one up reduce gradients during the backward (4: none)
    # Added for issue 14 (the stacks of the published runs).
    # flash class: 'fa2' (FlashAttention-2, SDPA's flash backend) | 'fa3' (FA3, cuDNN's fused attention)
    attention_kernel: str = "fa2"
    fused_elementwise: bool = True  # norms, RoPE, SwiGLU, casts fused (TE, torch.compile) vs one kernel each
    # its attention kernel visits only the blocks inside a sliding window (FlashAttention's window_size, TE, FlexAttention's
    # block mask) vs a masked kernel that computes every block of the s x s scores and keeps the mask for its backward
    # (flopwise's SDPA with a band mask)
    window_kernel: bool = True
    # latent attention's values padded to the keys' width for a fused kernel of one head dim, the padded output kept
    # beside the output projection's input (flopwise's trainer, as Hugging Face's DeepSeek code for FA2) vs a kernel
    # taking unequal head dims (TE / cuDNN fused attention, FA3: 192 / 128)
    pads_latent_values: bool = False
    pipeline: str = "megatron"  # 'megatron': async p2p | 'deepspeed': blocking p2p, one instruction at a time
    grad_reduce_bytes: int = 4  # bytes per gradient element in the data-parallel reduction (bf16/fp32 runs)
    selective_recompute: bool = True  # the stack has Megatron's selective recomputation (the search may pick it)
    # the stack has per-op selective checkpointing (recompute = 'op': torch's SAC API, as torchtitan and flopwise's
    # trainer apply it to a block of aten matmuls); the others' layouts refuse it
    op_checkpoint: bool = False
    # TP collectives split into tp chunks and pipelined with the adjacent GEMM's chunks (Transformer Engine's
    # userbuffers comm-GEMM overlap, on in NeMo's H100 recipes): only one chunk per collective stays exposed
    tp_overlap: bool = False
    # full recomputation through torch.utils.checkpoint(use_reentrant=False), whose early stop ends the recomputed
    # forward once the last tensor the backward saved is back: the block's last GEMM (the MLP's down projection,
    # whose output nothing saves) and its TP collective are not repeated. Reentrant checkpointing (Megatron,
    # DeepSpeed) reruns the whole block.
    recompute_early_stop: bool = False
    # the loss as separate PyTorch kernels, F.cross_entropy(logits.float()): cast, log-softmax and their backward
    # each make passes over the fp32 logits of their own (plan.cost.loss_bytes), where a fused or
    # vocab-parallel loss reads the logits once and writes their gradient once
    eager_loss: bool = False
    # fp32 parameters and gradients in the model, with torch.autocast casting each weight to the training dtype in
    # every forward (flopwise's trainer on a GPU): the casts are saved for the backward, one copy of the weights
    # alive at the activation peak, and the optimizer keeps no master copy (4 + 4 + 8 bytes, not 2 + 2 + 12)
    autocast_weights: bool = False
    # a compiled stack whose compiled regions end at each tensor-parallel collective: with tp > 1 its blocks'
    # elementwise work (norms, activations, residuals, and their selective recomputation) is costed at
    # Constants.eager_traffic; FP8 casts (torchao's, compiled before the gathers) and the final norm stay fused.
    # PyTorch-native TP (DTensor) under torch.compile:
    # the norms, residual adds and activations on either side of each redistribution are not fused across it, and
    # the batch-first sequence gathers add layout copies. Chosen on the fit rows' cross-validation (issue 14,
    # benchmarks/RESULTS.md "Eighth round"), not measured kernel by kernel.
    unfused_across_tp: bool = False
    # the attention core the stack runs where FlashAttention-2 does not (Accelerator.flash_attention: Volta, Pascal,
    # Turing): 'unfused' for stacks whose fused attention is FlashAttention's or cuDNN's (Megatron-LM then runs its own
    # fused softmax over s x s scores; Transformer Engine's fused attention needs Ampere), 'flash' for PyTorch's SDPA,
    # which picks its memory-efficient kernel there (fused, no s^2 tensors; costed at the flash rate of pre-Hopper parts)
    flash_fallback: str = "flash"
    # bytes the elementwise kernels move per byte of the planner's elementwise passes (ELEMENTWISE_*_PASSES over a
    # layer's kept activations), measured for a trainer whose kernels were profiled; 0: the stack class's own (1 for
    # fused kernels, Constants.eager_traffic, fitted to published runs, for one kernel per op)
    elementwise_traffic: float = 0.0
    # seconds each optimizer step spends outside the GPU's queue of work, whatever the step's size: the host work
    # between steps (the optimizer's found-inf and grad-norm syncs, loss reporting and logging, the framework's loop)
    # during which the GPU waits for the next kernels. Visible only where steps are short (one micro-batch of a
    # small model); issue 14, benchmarks/planner_calibration/FINDINGS.md section 30.
    step_overhead_s: float = 0.0
    # seconds the host needs to issue one transformer block's work for one micro-batch, forward and backward (the
    # recomputed forward included): the dispatcher, autograd, the stack's wrappers and the kernel launches. The host
    # runs ahead of the GPU, so this costs nothing until a block's kernels take less time than it; then the block
    # takes this long. None: the profile's rule (eager_block_host), else not costed (it differs twentyfold between
    # stacks, FINDINGS.md sections 31-32); a user sets what `flopwise plan host-probe` measured for theirs.
    block_host_s: float | None = None
    # a PyTorch-native eager stack: without a block_host_s, a block's host time is EAGER_BLOCK_HOST_S's figure for
    # the wrappers its layout puts on it (DTensor TP, recomputation, FSDP); on a GPU
    eager_block_host: bool = False
    # blocks through torch.compile, whose partitioner (AOTAutograd's min-cut rematerialization) picks what the backward
    # keeps: each norm its input and output (the normalised x recomputed), a SwiGLU its gate, up and product (SiLU
    # recomputed), as fused kernels do (fused_norm, whose count also leaves out the norm's fp32 rstd, 4 bytes a token);
    # measured for dense blocks on CPU against Inductor's saved tensors (tests/plan/test_memory_vs_torch.py; a compiled
    # MoE block keeps 6% less than planned, not tested). Memory only: the elementwise kernels' traffic (plan/cost.py)
    # still runs over the tensors they write.
    compiled_saves: bool = False
    # the library of its low-precision linear layers: 'transformer-engine', whose backward keeps each GEMM input as its
    # low-precision cast, or 'torchao' (Float8Linear), which keeps them in the training dtype and casts them again in
    # the backward (since pytorch/ao#920, 2024-10: matmul_with_hp_or_float8_args saves input_hp and weight_hp_t) and
    # offers the rowwise recipes (fp8-rowwise, fp8-rowwise-gw-hp) that Transformer Engine does not
    fp8_library: str = "transformer-engine"
    # its non-interleaved pipeline runs fewer micro-batches than stages, all in fill and drain: Megatron's 1F1B warms
    # up min(stages - rank - 1, micro-batches) (megatron/core/pipeline_parallel/schedules.py), DeepSpeed's
    # TrainSchedule likewise; torch.distributed.pipelining's 1F1B (torchtitan) and flopwise's trainer refuse it
    fewer_microbatches_than_stages: bool = False
    # Megatron's own data parallelism: gradients accumulate into a main-grad buffer of grad_reduce_bytes per element
    # (fp32 under bf16: Megatron-LM forces accumulate_allreduce_grads_in_fp32), held whole under the distributed
    # optimizer, and under fp16 the optimizer keeps an fp32 gradient copy (plan/memory.py: 18 and 20 bytes per
    # parameter, Megatron-LM README); memory only
    main_grads: bool = False

    @property
    def kernel(self) -> str:
        """Its attention core as `--attention` names it: its fused kernel's class (fa2 | fa3), or unfused."""
        return self.attention_kernel if self.attention == "flash" else self.attention

    def value_head_dim(self, model) -> int:
        """The values' dims per head its attention kernel runs over: head_dim, or under latent attention the keys'
        qk_head_dim where the stack pads the values to them (pads_latent_values)."""
        return model.qk_head_dim if model.is_latent and self.pads_latent_values else model.head_dim


# flopwise's blocks on an H200 (benchmarks/planner_kernels.py --sections step, torch.profiler's kernels by kind;
# RESULTS.md "Third H200 lease"): eager, its norms, RoPE (in fp32), SwiGLU, residual adds
# and autocast's casts move 4.1x the planner's passes; each block through torch.compile (train.compile = true),
# 1.23x. Both fitted on the 2048-wide model alone; at widths 1024, 3072, 4096 and the 8B's (seq 8192) the eager
# factor is within -15%..+10%, the compiled one within -9%..+6%. Measured under bf16 autocast: an fp32 run has no
# casts (about a third of that time), so it overstates fp32 runs, a small term on a CPU where GEMMs dominate.
# `compiled` also plans the partitioner's saved tensors (Software.compiled_saves); on that H200 the compiled step's
# peak memory was 4-8% below eager's.
FLOPWISE_EAGER_TRAFFIC = 4.1
FLOPWISE_COMPILED_TRAFFIC = 1.23
# the host work between steps of a stack that syncs the host every step (Software.step_overhead_s): read off MLPerf's
# Llama 3.1 8B rows (one micro-batch per step, 0.07-0.7 s steps: 40-70 ms per step on Blackwell beyond the planned
# work); each profile that pays it was declared before a blind set and scored on it (FINDINGS.md section 30)
HOST_SYNC_STEP_S = 0.05

# the wrappers a PyTorch-native stack can put on a block, in the order their names are joined: DTensor TP, full
# activation recomputation, per-op selective checkpointing (recompute = 'op'), FSDP, bf16 autocast (plan.host_probe
# times stacks of them; EAGER_BLOCK_HOST_S is keyed so)
WRAPPER_PARTS = ("tp", "ac", "sac", "fsdp", "autocast")


def wrapper_key(parts) -> str:
    """A stack of wrappers by its one name: the parts in WRAPPER_PARTS order joined by '+', 'eager' for none."""
    return "+".join(p for p in WRAPPER_PARTS if p in parts) or "eager"


# the host time per block and micro-batch, forward and backward, of a Llama-style block under the wrappers a
# PyTorch-native eager stack puts on it (plan.host_probe, `flopwise plan host-probe` on this project's CPU: Intel Xeon
# under KVM, torch 2.13.0+cpu, 2026-12-05, world 8, 40 repeats). Declared before the twenty-seventh fresh holdout
# and adopted on it as the `torch-eager` profile's (9 rows: 73.8% / 85.1% without, 71.3% / 82.5% with; FINDINGS.md
# section 33). Keys as host_probe names the stacks of wrappers: tp (tp > 1), ac (full recomputation), fsdp (zero >= 2).
# The stacks with sac (per-op checkpointing, recompute = 'op') were timed on the same machine class on 2026-12-05 (the
# fifteenth session; the same run gave eager 0.52, ac 1.39, tp+ac 7.75, tp+ac+fsdp 8.85 ms: within 6% of the figures
# above); not scored on any run.
EAGER_BLOCK_HOST_S = {"eager": 0.52e-3, "tp": 4.49e-3, "ac": 1.47e-3, "fsdp": 1.80e-3, "tp+ac": 7.30e-3,
                      "tp+fsdp": 5.85e-3, "ac+fsdp": 2.75e-3, "tp+ac+fsdp": 8.50e-3,
                      "sac": 2.80e-3, "tp+sac": 9.50e-3, "sac+fsdp": 4.28e-3, "tp+sac+fsdp": 10.99e-3}

SOFTWARE = {
    # flopwise's trainer: PyTorch SDPA (flash), no dropout, nn.RMSNorm (autograd keeps input, normalised x and
    # output); FSDP2 (ZeRO-2/3) reduces gradients during the backward, while replicated DP and ZeRO-1 reduce
    # them in one flat all-reduce after it (flopwise.parallel.data_parallel).
    # Its loss is F.cross_entropy(logits.float()) (train/engine.py): eager_loss. Its elementwise work is one PyTorch
    # kernel per op (Training.compiled: fused by torch.compile). On Hopper its SDPA call runs cuDNN's fused attention
    # (the H200 profile's kernels: cudnn_generated_fort_native_sdpa_sm90_flash_*, torch 2.11, cuDNN 9.19), the FA3
    # class; on older GPUs the cost model prices flash attention at one rate whatever the kernel.
    "flopwise": Software("flash", False, False, 2, attention_kernel="fa3", fused_elementwise=False, op_checkpoint=True,
                         elementwise_traffic=FLOPWISE_EAGER_TRAFFIC, recompute_early_stop=True, eager_loss=True,
                         autocast_weights=True, window_kernel=False, pads_latent_values=True),
    # Megatron-LM as in the published runs (Narayanan et al. 2021, Korthikanti et al. 2022): fused
    # scale-mask-softmax + dropout (no flash attention yet), GPT dropout, apex fused LayerNorm, gradient
    # all-reduce after the backward (no overlap in those versions).
    "megatron": Software("unfused", True, True, 4, fewer_microbatches_than_stages=True, main_grads=True),
    # NeMo / Megatron-Core / Megatron-Bridge with Transformer Engine: cuDNN fused attention (FA3 class on
    # Hopper), fused norm + cast kernels, distributed optimizer overlapping its reduce-scatter and all-gather.
    # NeMo's distributed fused Adam reduces gradients in bf16 (grad_sync_dtype). TP communication overlapped
    # with the GEMMs (tp_comm_overlap, userbuffers).
    # It pays HOST_SYNC_STEP_S (scored blind on the twenty-third fresh holdout: 10.4% / 24.6% with it, 19.5% / 29.5%
    # without).
    "te": Software("flash", False, True, 1, attention_kernel="fa3", grad_reduce_bytes=2, tp_overlap=True,
                   step_overhead_s=HOST_SYNC_STEP_S, fewer_microbatches_than_stages=True, main_grads=True,
                   flash_fallback="unfused"),
    # Megatron-LM's own training script (pretrain_gpt.py) with Transformer Engine, as its defaults run it when a
    # user launches it (FlagPerf, Megatron-LLaMA, research code): TE's kernels, but bf16 gradients accumulated and
    # reduced in fp32 (arguments.py forces accumulate_allreduce_grads_in_fp32 under bf16 unless
    # --grad-reduce-in-bf16), the gradient reduction and parameter gather after the backward (--overlap-grad-reduce
    # and --overlap-param-gather are opt-in) and TP collectives exposed (--tp-comm-overlap is opt-in). NVIDIA's own
    # recipes (NeMo, dgxc, MLPerf) turn these on: that is 'te'. Dropout is off, as Llama-style configs set it
    # (--hidden-dropout 0 --attention-dropout 0); a GPT run on Megatron's 0.1 default does a little more elementwise work.
    # Its training loop and mixed-precision optimizer are NeMo's (Megatron-Core's): the host syncs on the found-inf
    # check and the gradient norm every step, so it pays HOST_SYNC_STEP_S (declared before the twenty-fourth fresh
    # holdout and scored on it: 7.6% / 60.3% with it, 16.1% / 83.1% without).
    "megatron-lm": Software("flash", False, True, 4, attention_kernel="fa3", step_overhead_s=HOST_SYNC_STEP_S,
                            fewer_microbatches_than_stages=True, main_grads=True, flash_fallback="unfused"),
    # PyTorch FSDP stacks (torchtitan, llm-foundry, fms-fsdp) in eager mode: SDPA / flash-attn 2, every
    # elementwise op its own kernel, FSDP overlapping its collectives; the host's time per block by its wrappers
    # (EAGER_BLOCK_HOST_S).
    "torch-eager": Software("flash", False, False, 2, fused_elementwise=False, recompute_early_stop=True, op_checkpoint=True,
                            eager_block_host=True, fp8_library="torchao"),
    # the same under torch.compile: elementwise chains fused by Inductor.
    "torch-compile": Software("flash", False, False, 2, recompute_early_stop=True, unfused_across_tp=True,
                              op_checkpoint=True, compiled_saves=True, fp8_library="torchao"),
    # Megatron-DeepSpeed as BLOOM and MT-NLG ran (2021-22): Megatron's unfused kernels, DeepSpeed's
    # PipelineEngine (blocking point-to-point, no interleaving), gradient reduction after the backward, and
    # only whole-block activation checkpointing (selective recomputation came with Korthikanti et al. 2022).
    # The DeepSpeed engine syncs the host every step too (the fp16 loss scaler's overflow check, the gradient norm):
    # HOST_SYNC_STEP_S, declared before the twenty-fifth fresh holdout (two rows: 33.8% / 60.2% with it, 41.4% /
    # 68.6% without; two more in the twenty-sixth: 9.3% / 10.7% against 22.8% / 23.8%).
    "deepspeed": Software("unfused", True, True, 4, pipeline="deepspeed", selective_recompute=False,
                          step_overhead_s=HOST_SYNC_STEP_S, fewer_microbatches_than_stages=True),
    # A Hugging Face transformers model under the DeepSpeed engine (ZeRO; a DeepSpeed PipelineModule built from one,
    # as ATorch's 3D strategy does, is costed with Megatron's asynchronous pipeline sends): the model's own PyTorch
    # kernels (SDPA / FlashAttention-2, one kernel per elementwise op, no dropout in Llama-family models), ZeRO-3
    # prefetching its gathers and overlapping its reductions (overlap_comm defaults on for stage 3 only), gradients
    # reduced in the training dtype (communication_data_type defaults to it), reentrant checkpointing (the
    # transformers default) and no selective recomputation.
    "deepspeed-hf": Software("flash", False, False, 3, fused_elementwise=False, grad_reduce_bytes=2,
                             selective_recompute=False, step_overhead_s=HOST_SYNC_STEP_S,
                             fewer_microbatches_than_stages=True),
}


@dataclass(frozen=True)
class Cluster:
    accelerator: Accelerator
    gpus: int
    gpus_per_node: int = 8
    intra_node_bw: float | None = None  # bytes/s per GPU, one direction; None: the accelerator's link
    # bytes/s per GPU, one direction; None: the accelerator's reference system (8 x HDR 200 Gb/s per DGX A100
    # node = 25 GB/s, 8 x NDR 400 Gb/s per DGX H100/H200 node = 50 GB/s)
    inter_node_bw: float | None = None

    def __post_init__(self) -> None:
        if self.gpus < 1:
            raise ConfigError(f"cluster gpus = {self.gpus}: must be a positive integer")
        if self.gpus_per_node < 1:
            raise ConfigError(f"cluster gpus_per_node = {self.gpus_per_node}: must be a positive integer")
        if self.gpus > self.gpus_per_node and self.gpus % self.gpus_per_node:
            raise ConfigError(
                f"cluster gpus = {self.gpus}: must be a multiple of gpus_per_node = {self.gpus_per_node}"
            )
        if any(bw is not None and bw <= 0 for bw in (self.inter_node_bw, self.intra_node_bw)):
            raise ConfigError("cluster bandwidths must be positive")

    @property
    def intra_bw(self) -> float:
        return self.intra_node_bw if self.intra_node_bw is not None else self.accelerator.link_bandwidth

    def intra_link(self, span: int, members: int = 2) -> float:
        """Bytes/s per GPU and direction inside a node for a group of `members` GPUs (2: a point-to-point transfer)
        over `span` consecutive GPUs: NVLink, or PCIe where the group is wider than an NVLink domain smaller than the
        node (Accelerator.nvlink_domain_gpus: H100 PCIe's bridged pairs; a given intra_node_bw, --intra-gbps, holds for
        every group), or on a mesh of direct links (Accelerator.mesh_links: AMD's Infinity Fabric) the share of the
        GPU's links (the catalogue's, or a given intra_node_bw) that the members - 1 others take."""
        acc = self.accelerator
        if acc.mesh_links > 0:
            return self.intra_bw * min(max(1, min(members, self.gpus_per_node) - 1), acc.mesh_links) / acc.mesh_links
        if self.intra_node_bw is None and 0 < acc.nvlink_domain_gpus < span and acc.pcie_bandwidth > 0:
            return acc.pcie_bandwidth
        return self.intra_bw

    @property
    def inter_bw(self) -> float:
        return self.inter_node_bw if self.inter_node_bw is not None else self.accelerator.network_bandwidth


@dataclass(frozen=True)
class Training:
    global_batch: int  # sequences per optimizer step
    tokens: float = 0.0  # tokens to train (for days and GPU-hours); 0: not asked
    precision: str = "bf16"
    seq_len: int | None = None  # None: the model's context
    software: str = "flopwise"  # which trainer runs the layout: its kernels and overlaps (SOFTWARE)
    expert_imbalance: float = 1.0  # MoE: the busiest expert-parallel rank's tokens over the mean (plan/experts.py)
    # the run's attention kernel as stated; None: the profile's (or its fallback on a part without FlashAttention-2:
    # attention_kernel)
    attention: str | None = None
    compiled: bool = False  # flopwise's trainer with train.compile = true: each block through torch.compile
    # the stack's host time per step where the user measured it (e.g. ~0 under full-iteration CUDA graphs); None: the
    # profile's Software.step_overhead_s
    step_overhead_s: float | None = None
    # the stack's host time per block and micro-batch where the user measured it (flopwise plan host-probe); None: the
    # profile's Software.block_host_s
    block_host_s: float | None = None
    # the data-parallel gather of the blocks' weights moves their FP8 cast (torchao's enable_fsdp_float8_all_gather,
    # Megatron's --fp8-param-gather): half the bytes (and ZeRO-3's gathered layers held in FP8), and torchao casts each
    # rank's shard before every gather, not the gathered weight on every micro-batch (plan/cost.py,
    # torchao_weight_cast_bytes, CostModel.shard_cast_time); per-tensor FP8 (precision fp8), dense models only
    fp8_all_gather: bool = False
    # the whole step captured in a CUDA graph (Megatron's full_iteration graphs): no host time per MoE block
    cuda_graphs: bool = False
    # the expert all-to-all overlapped with computation (Megatron's moe_a2a_overlap / overlap_moe_expert_parallel_comm):
    # each MoE block's hides behind that block's forward and backward compute (CostModel.layer_terms)
    a2a_overlap: bool = False
    # the MoE token dispatcher (DISPATCHERS): how an all-to-all over nodes moves its rows (plan/experts.py)
    dispatcher: str = "alltoall"

    def __post_init__(self) -> None:
        if not isinstance(self.global_batch, int) or self.global_batch < 1:
            raise ConfigError(f"global_batch = {self.global_batch!r}: must be a positive integer")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision = {self.precision!r}: must be one of {', '.join(PRECISIONS)}")
        if self.software not in SOFTWARE:
            raise ConfigError(f"software = {self.software!r}: must be one of {', '.join(SOFTWARE)}")
        if self.tokens < 0:
            raise ConfigError(f"tokens = {self.tokens}: must be non-negative")
        if self.attention is not None:
            if self.attention not in ATTENTION_KERNELS:
                raise ConfigError(f"attention = {self.attention!r}: must be one of {', '.join(ATTENTION_KERNELS)}")
            # a stated kernel is kept even where it is the profile's: on a part without FlashAttention it says the run
            # had a fused kernel all the same (attention_kernel)
            if self.software == "flopwise" and self.attention not in ("flash", SOFTWARE["flopwise"].attention_kernel):
                raise ConfigError(f"attention = {self.attention!r}: flopwise's trainer runs SDPA (flash) attention, "
                                  f"its kernel class measured on Hopper; set it for another stack's profile (software)")
        if self.compiled and self.software != "flopwise":
            raise ConfigError(f"compiled applies to flopwise's trainer; the {self.software!r} profile already says "
                              f"how its stack runs (torch-compile is PyTorch-native stacks under torch.compile)")
        if self.dispatcher not in DISPATCHERS:
            raise ConfigError(f"dispatcher = {self.dispatcher!r}: must be one of {', '.join(DISPATCHERS)}")
        if not self.expert_imbalance >= 1.0:
            raise ConfigError(f"expert_imbalance = {self.expert_imbalance}: must be at least 1 (1: balanced)")
        # Megatron's --fp8-param-gather keeps Transformer Engine's weights in their recipe's low precision, per-tensor
        # FP8 or MXFP8 (NVIDIA's Megatron-Bridge MXFP8 recipes gather so, benchmarks/planner_calibration/README.md,
        # fiftieth fresh holdout); torchao's enable_fsdp_float8_all_gather is per-tensor FP8's only
        gathers = ("fp8", "mxfp8") if self.profile.fp8_library == "transformer-engine" else ("fp8",)
        if self.fp8_all_gather and self.precision not in gathers:
            raise ConfigError(f"fp8_all_gather: the weights' low-precision gather (torchao's "
                              f"enable_fsdp_float8_all_gather, Megatron's --fp8-param-gather) needs precision = "
                              f"{' or '.join(gathers)} under the {self.software!r} profile, not {self.precision!r}")
        for name in ("step_overhead_s", "block_host_s"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < math.inf:
                raise ConfigError(f"{name} = {value}: must be a non-negative number of seconds")

    @property
    def dtype_bytes(self) -> int:
        return 4 if self.precision in FULL_PRECISIONS else 2

    @property
    def gathered_weight_bytes(self) -> float:
        """Bytes per element of a block weight as the data-parallel gather moves and holds it (fp8_all_gather)."""
        return self.gemm_format.stored_bytes if self.fp8_all_gather else self.dtype_bytes  # fp8: __post_init__

    @property
    def gemm_format(self) -> GemmFormat | None:
        """The low-precision format of the blocks' linear-layer GEMMs (FP8, MXFP8, NVFP4, MXFP4); None: the dtype."""
        return GEMM_FORMATS.get(self.precision)

    @property
    def profile(self) -> Software:
        return _profile(self.software, self.attention, self.compiled, self.step_overhead_s, self.block_host_s)


def falls_back(training: Training, acc: Accelerator) -> bool:
    """Whether `training`'s attention is its profile's fallback on `acc`: a fused kernel not stated by the run, on a
    part FlashAttention-2 does not run on (Accelerator.flash_attention)."""
    return training.attention is None and not acc.flash_attention and training.profile.attention == "flash"


def fallback_words(training: Training, acc: Accelerator) -> str:
    """What a plan says of the fallback kernel on `acc`: `training` as stated (falls_back holds) or with the fallback
    already applied (CostModel.training)."""
    kernel = training.profile.flash_fallback if training.attention is None else training.attention
    if kernel == "unfused":
        return (f"{acc.name} cannot run FlashAttention-2 (it needs Ampere or newer): the `{training.software}` "
                f"profile's stack runs unfused attention there (Megatron-LM's fused softmax over s x s scores)")
    return (f"{acc.name} cannot run FlashAttention-2 (it needs Ampere or newer): PyTorch's SDPA runs its "
            f"memory-efficient kernel there, costed as fused attention at the flash rate of pre-Hopper parts")


def attention_kernel(training: Training, acc: Accelerator) -> str:
    """The attention core `training` is costed with on `acc`: the kernel it states (Training.attention), else its
    profile's, else, where that is fused and the part cannot run FlashAttention-2, the profile's fallback there
    (Software.flash_fallback)."""
    return training.profile.flash_fallback if falls_back(training, acc) else training.profile.attention


def attention_class(training: Training, acc: Accelerator) -> str:
    """What the attention core is costed as on `acc` (plan/cost.py): 'unfused'; 'fa2' or 'fa3', the fused kernel's
    class, on parts whose fused kernels the cost model rates by class (FP8 tensor cores: Hopper and newer); else
    'flash', one rate for every fused kernel (a measured attention rate, or pre-Hopper parts)."""
    kernel = attention_kernel(training, acc)
    return kernel if kernel != "flash" or not rates_by_class(acc) else training.profile.kernel


def rates_by_class(acc: Accelerator) -> bool:
    """Whether the cost model rates fused attention by kernel class on `acc` (FA3 / cuDNN well above FA2 on Hopper-class
    tensor cores, Shah et al. 2024) rather than at one rate (a measured one, or FLASH_EFFICIENCY of the GEMMs)."""
    return acc.fp8_peak_flops > 0 and acc.flash_attention and not acc.attention_efficiency > 0


def refuse_attention(training: Training, acc: Accelerator) -> None:
    """ConfigError where `training` states a fused kernel class `acc` cannot run or the cost model cannot tell apart."""
    stated = training.attention
    if stated not in FLASH_CLASSES:
        return
    if training.dtype_bytes == 4:  # fp32 / tf32: FlashAttention and cuDNN's kernels take 2-byte inputs
        raise ConfigError(f"attention = {stated!r}: FlashAttention's kernels run in bf16 or fp16, not "
                          f"{training.precision}; state flash")
    if stated == "fa2" and not acc.flash_attention:
        raise ConfigError(f"attention = 'fa2': FlashAttention-2 needs Ampere or newer, and {acc.name} is older; state "
                          f"flash for a memory-efficient fused kernel (SDPA's), or unfused")
    if stated == "fa3" and not rates_by_class(acc):
        why = ("its fused attention runs at the rate measured at start-up" if acc.attention_efficiency > 0 else
               "FA3-class kernels are told apart from FlashAttention-2 on parts with FP8 tensor cores (Hopper and "
               "newer, CDNA 3 and newer) only, and run on those")
        raise ConfigError(f"attention = 'fa3' on {acc.name}: {why}; state flash")


@cache
def _profile(software: str, attention: str | None, compiled: bool = False,
             step_overhead_s: float | None = None, block_host_s: float | None = None) -> Software:
    """The stack's profile with the run's attention kernel where it states one (`attention`; None: the profile's);
    `compiled`: flopwise's with its elementwise chains fused by torch.compile; `step_overhead_s` and `block_host_s`:
    the host times per step and per block the user measured, in place of the profile's."""
    profile = SOFTWARE[software]
    if attention in FLASH_CLASSES:  # a fused kernel of a stated class
        profile = replace(profile, attention="flash", attention_kernel=attention)
    elif attention is not None:
        profile = replace(profile, attention=attention)
    if step_overhead_s is not None:
        profile = replace(profile, step_overhead_s=step_overhead_s)
    if block_host_s is not None:
        profile = replace(profile, block_host_s=block_host_s)
    if compiled:
        profile = replace(profile, fused_elementwise=True, elementwise_traffic=FLOPWISE_COMPILED_TRAFFIC,
                          compiled_saves=True)
    return profile
