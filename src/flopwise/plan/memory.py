"""Memory per rank: model states by ZeRO stage, activations by recompute mode and sequence parallelism.

Model states (Rajbhandari et al. 2020, "ZeRO", section 3.1): mixed-precision Adam keeps 2 bytes of
parameters, 2 bytes of gradients and K = 12 bytes of optimizer state (fp32 master copy, momentum, variance)
per parameter, 16 in all. Pure fp32 training (the CPU trainer) keeps 4 + 4 + 8 (AdamW exp_avg and
exp_avg_sq, no master copy): also 16. ZeRO-1 divides the optimizer state by dp, ZeRO-2 also the gradients,
ZeRO-3 also the parameters. Megatron's own data parallelism (Software.main_grads) accumulates the gradients into a
main-grad buffer of the reduction's dtype, fp32 under bf16 unless the recipe reduces in bf16, and under fp16 its
optimizer keeps an fp32 copy of the gradients beside the master weights (Megatron-LM README, "Distributed Optimizer":
bf16 parameters with fp32 gradients 18 bytes per parameter, 6 + 12/d with the distributed optimizer; fp16 20, 4 + 16/d).

Activations per transformer layer and micro-batch (Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models", section 4, equation 1 and Table 2): for a GELU MLP of 4h with
dropout, no tensor parallelism, fp16: s b h (34 + 5 a s / h) bytes. We count the same tensors one by one so
that SwiGLU, LFA, grouped-query attention, fused (flash) attention and no-dropout trainers are covered:
  layer norms          2 x norm      (fused kernel, Megatron/apex: its input, h; PyTorch's nn.RMSNorm on
                                      autograd: input + normalised x, 2h, + fp32 rstd)   replicated under TP
  attention input      h              (the first norm's output = QKV projection input)  replicated
  LFA                  2h + norm + h  (x[t-1] and y1, y1[t-1] (h/2 each) as conv inputs, the filter's norm,
                                      its output x' that feeds Q and K)                 replicated
  Q, K, V              q + 2 kv       (after RoPE; QK^T needs Q, K, AV needs V; latent   split by TP
                                      attention's Q and K carry rope_head_dim more dims per head, and its two
                                      latents keep their norm and up-projection inputs, replicated)
  attention core       unfused: softmax output + dropout output (2 a s) + dropout mask (a s, 1 byte);
                       flash: the fp32 log-sum-exp (a) only (its output is the next input)  split by TP
  output projection    q              (its input)                                       split by TP
  MLP input            h              (the second norm's output)                        replicated
  MLP inner            GELU: 2 x ffn (GELU input, second matmul input);
                       SwiGLU: 4 x ffn (gate, up, SiLU output, product); 3 x ffn with
                       Megatron's fused bias-SwiGLU kernel (gate, up, product)          split by TP
                       (blocks under torch.compile keep what the fused kernels keep: its partitioner
                       recomputes the normalised x and SiLU from the saved inputs; Software.compiled_saves)
  dropout masks        2 x h, 1 byte each (after attention and MLP)                     replicated
  MoE (models/moe.py)  the MLP inner term per expert visit, top_k x (the above)          split by TP
                       the routed rows: gathered input, expert output, weighted output, 3 top_k h,
                       and the router in fp32: its input cast (4h when training in 16 bits), its
                       q, k, v (3E), softmax(q k^T) (E^2, attention router), logits and
                       probabilities (2E), top-k weights (4k)     on every TP rank, not split by SP
                       (the MoE layer runs on the gathered sequence); a shared expert: one more
                       MLP inner term at its width                                       split by TP
With these rules the GPT case (fused norm, unfused attention, dropout) reproduces Korthikanti's
34 + 5 a s / h exactly, and with TP t and no sequence parallelism the replicated share is their 10 s b h;
flopwise's own model on CPU matches PyTorch's saved tensors within 1% (tests/plan/test_memory_vs_torch.py).
Context parallelism (cp ranks share each sequence) divides every count by cp.
Sequence parallelism splits the replicated share by t too (their equation 4:
s b h (34 + 5 a s / h) / t). Selective recomputation drops the attention core (their equation 6:
34 s b h / t with SP); full recomputation keeps only each layer's input, 2 s b h (/t with SP). Per-op selective
checkpointing (recompute = 'op', torchtitan's op policy) keeps the input, the output of every second matmul in the
order the forward runs them (Q, V, gate, down in a SwiGLU block; a row-parallel one whole, before its reduction)
and the fused attention's output with its log-sum-exp; everything else is recomputed in the backward.

In-flight micro-batches (Narayanan et al. 2021, section 2.2): GPipe keeps all m; 1F1B keeps p - i on stage i
(at most m); the interleaved schedule keeps (2 (p - i - 1) + (v - 1) p + 1) model chunks of L / (p v)
layers on stage i (Megatron-LM's warm-up count), which for i = 0 is L (1 + (p - 1) / (p v)) layers'
worth, Korthikanti's equation for the first stage.
The last stage also holds the logits of its in-flight micro-batches (one under 1F1B, whose last stage runs
each backward at once; m under GPipe): the fp32 log-softmax the loss keeps, 4 s b V / t (Korthikanti section
4.3), plus the bf16/fp16 logits it was cast from. Full recomputation adds one layer's activations, alive
while that layer is recomputed in the backward. An eager loss adds its backward's fp32 gradients
(loss_backward_bytes); a trainer that keeps fp32 weights under autocast (Software.autocast_weights) holds their
casts for the backward, one copy of the rank's weights in the training dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

from flopwise.flops import block_gemms, op_checkpoint_gemms, param_counts
from flopwise.hardware import GB
from flopwise.layout import Layout
from flopwise.models.config import ModelConfig
from flopwise.plan.spec import FULL_PRECISIONS, Software, Training

# Memory the framework takes besides tensors: CUDA context, NCCL and cuBLAS workspaces (~1-2 GB measured on
# A100/H100 with PyTorch), and the caching allocator's fragmentation, taken as a fraction of the device.
RESERVED_BYTES = 1.5 * GB
ALLOCATOR_HEADROOM = 0.05


@dataclass(frozen=True)
class LayerParams:
    sharded: int  # split by TP (column/row cuts of the projections)
    replicated: int  # whole on every TP rank (norms, LFA filter)

    def per_rank(self, tp: int) -> float:
        return self.sharded / tp + self.replicated


def layer_params(cfg: ModelConfig) -> LayerParams:
    counts = param_counts(cfg)
    sharded = sum(g.weights for g in block_gemms(cfg) if g.tp != "replicated")
    return LayerParams(sharded, counts.per_layer - sharded)


def state_bytes_per_param(precision: str, profile: Software | None = None) -> tuple[int, int, int]:
    """(parameter, gradient, optimizer) bytes per parameter: ZeRO paper's 2 + 2 + 12, or fp32's 4 + 4 + 8; under
    Megatron's main grads (`profile.main_grads`) 2 + the reduction's bytes + 12, or fp16's 2 + 2 + 16."""
    if precision in FULL_PRECISIONS:
        return 4, 4, 8
    if profile is not None and profile.main_grads:
        return (2, 2, 16) if precision == "fp16" else (2, profile.grad_reduce_bytes, 12)
    return 2, 2, 12


def model_state_bytes(params: float, precision: str, zero: int, dp: int,
                      profile: Software | None = None) -> dict[str, float]:
    """Parameters, gradients and optimizer state of `params` parameters on one rank, ZeRO-sharded over dp
    ranks (the layout's shard group: Layout.shard_degree), as the stack's `profile` keeps them."""
    p, g, o = state_bytes_per_param(precision, profile)
    return {
        "params": params * p / (dp if zero >= 3 else 1),
        "grads": params * g / (dp if zero >= 2 else 1),
        "optimizer": params * o / (dp if zero >= 1 else 1),
    }


def layer_activation_bytes(
    cfg: ModelConfig, training: Training, layout: Layout, recompute: str | None = None, written: bool = False
) -> float:
    """Activation bytes one layer keeps for one micro-batch on one TP rank (see the module docstring). `written`: the
    tensors its kernels write as an eager stack keeps them, over which the cost model runs its elementwise passes
    (a compiled stack keeps fewer of them: Software.compiled_saves)."""
    recompute = recompute or layout.recompute
    s = training.seq_len or cfg.seq_len
    tokens = s * layout.micro_batch / layout.cp  # context parallelism splits the sequence
    t = layout.tp
    e = training.dtype_bytes
    h, a, ffn = cfg.hidden, cfg.heads, cfg.ffn
    sw = training.profile
    # queries and keys over qk_head_dim (latent attention: head_dim + rope_head_dim), values over the kernel's value
    # dims (head_dim, or qk_head_dim where the stack pads them), the output projection's input over head_dim; a
    # padding stack's kernel output is as wide as its values, kept beside the projection's unpadded input
    values = sw.value_head_dim(cfg)
    q, k, v = cfg.heads * cfg.qk_head_dim, cfg.kv_heads * cfg.qk_head_dim, cfg.kv_heads * values
    o, kernel_out = cfg.heads * cfg.head_dim, cfg.heads * values
    rep_div = t if layout.sp else 1  # sequence parallelism splits the replicated share
    if recompute == "full":  # only the layer input is kept (Korthikanti section 5: 2 s b h)
        return tokens * h * e / rep_div
    if recompute == "op":  # the input, every second matmul's output (flops.op_checkpoint_gemms), the attention output
        # a column-parallel output is this rank's 1/tp of n; a row-parallel one is the partial sum over all of n,
        # before its all-reduce or reduce-scatter
        kept = sum(g.n * e / (t if g.tp == "column" else 1) for g in op_checkpoint_gemms(cfg)[0])
        if sw.attention != "unfused":  # the fused kernel's output and its fp32 log-sum-exp (unfused: recomputed)
            kept += (kernel_out * e + 4 * a) / t
        return tokens * (h * e / rep_div + kept)
    fused = sw.fused_norm or (sw.compiled_saves and not written)
    norm = h * e if fused else 2 * h * e + 4  # fused: input; PyTorch: input, normalised x, fp32 rstd
    replicated = 2 * norm + (h + h) * e  # both norms, then QKV input and MLP input (the norms' outputs)
    if cfg.lfa:  # x[t-1], y1, y1[t-1] (conv inputs), the filter's norm, its output x' (Q and K input)
        replicated += 2 * h * e + norm + h * e
    if sw.dropout:
        replicated += 2 * h  # two 1-byte masks
    # latent attention: each latent's norm and its up projection's input, on the gathered sequence (the down
    # projections run whole on every TP rank): not split by SP
    latents = sum((width * e if fused else 2 * width * e + 4) + width * e
                  for width in (cfg.q_lora_rank, cfg.kv_lora_rank) if width)
    sharded = (q + k + v + o) * e  # Q, K, V and the output projection's input (= flash's saved output)
    if kernel_out != o and sw.attention != "unfused":  # a fused kernel's padded output (an unfused one's is not saved)
        sharded += kernel_out * e
    # SwiGLU: gate and up outputs, SiLU output, product (4 ffn); Megatron-family fused kernels (bias_swiglu) and
    # torch.compile's partitioner keep the fc1 output (gate and up) and the product, and recompute SiLU (3 ffn)
    mlp_inner = (2 if cfg.mlp != "swiglu" else 3 if fused else 4) * ffn * e
    sharded += mlp_inner * (1 + cfg.shared_ffn / ffn)  # (an MoE layer's shared expert: one more SwiGLU, its width)
    whole = latents  # on every TP rank whatever sp is: the latents, and the MoE layer's routed rows and router
    if cfg.experts:
        k, n = cfg.top_k, cfg.experts
        sharded += mlp_inner * (k - 1)  # the MLP inner term above is one expert visit
        router = 3 * n + (n * n if cfg.router == "attention" else 0) + 2 * n + 4 * k
        whole += 3 * k * h * e + 4 * router + (4 * h if e < 4 else 0)
    low = training.gemm_format
    # the GEMM inputs kept as their low-precision casts by Transformer Engine, block scales included: 1 byte in FP8,
    # 1 + 1/32 in MXFP8, 1/2 + 1/16 in NVFP4; torchao keeps them in the training dtype (Software.fp8_library), but the
    # elementwise passes (`written`) run over what the casts write either way, so its step time is costed the same
    if low and (sw.fp8_library == "transformer-engine" or written):
        replicated -= (h + h) * (e - low.stored_bytes)  # QKV and MLP inputs
        sharded -= (o + ffn + cfg.shared_ffn) * (e - low.stored_bytes)  # output projection and second MLP matmul inputs
    if sw.attention == "unfused":
        if recompute != "selective":  # softmax output, dropout output and its 1-byte mask
            sharded += 2 * a * s * e + (a * s if sw.dropout else 0)
    else:
        sharded += 4 * a  # flash keeps only its fp32 log-sum-exp besides Q, K, V and the output
    # a masked attention kernel (flopwise's windowed blocks: Software.window_kernel False) keeps its s x s mask in the
    # activation dtype for the backward, once per call whatever the batch
    masked = cfg.window and not sw.window_kernel and recompute != "selective"  # (selective: the mask is rebuilt)
    mask = cfg.windowed_layers / cfg.layers * s * s * e if masked else 0.0
    return tokens * (replicated / rep_div + sharded / t + whole) + mask


def mean_layer_activation_bytes(cfg: ModelConfig, training: Training, layout: Layout) -> float:
    """Activation bytes per layer averaged over a stage: with recompute = 'full' and recompute_every = k,
    one block in k keeps only its input and the others keep everything."""
    if layout.recompute != "full" or layout.recompute_every == 1:
        return layer_activation_bytes(cfg, training, layout)
    f = 1.0 / layout.recompute_every
    full = layer_activation_bytes(cfg, training, layout)
    return f * full + (1 - f) * layer_activation_bytes(cfg, training, layout, recompute="none")


def final_norm_bytes(cfg: ModelConfig, training: Training, layout: Layout) -> float:
    """The final norm on the last stage (its output is the LM head's input)."""
    s = training.seq_len or cfg.seq_len
    e = training.dtype_bytes
    per_token = cfg.hidden * e * (2 if training.profile.fused_norm else 3)
    return s * layout.micro_batch / layout.cp * per_token / (layout.tp if layout.sp else 1)


def logits_per_rank(cfg: ModelConfig, training: Training, layout: Layout) -> float:
    """Logits of one micro-batch on one rank: its tokens (the sequence split by cp) x its share of the vocabulary
    (split by tp)."""
    s = training.seq_len or cfg.seq_len
    return s * layout.micro_batch / layout.cp * cfg.vocab_size / layout.tp


def logits_bytes(cfg: ModelConfig, training: Training, layout: Layout) -> float:
    """Logits of one micro-batch on the last stage: the fp32 log-softmax the loss keeps, plus the
    bf16/fp16 logits it was cast from (alive together while the loss is computed)."""
    e = training.dtype_bytes
    return logits_per_rank(cfg, training, layout) * (4 + (e if e != 4 else 0))


def loss_backward_bytes(cfg: ModelConfig, training: Training, layout: Layout) -> float:
    """What an eager loss adds, beside the logits, at the start of the backward: log-softmax's backward holds the
    fp32 gradient of its output and writes the fp32 gradient of its input, 8 bytes per logit (measured on an H200:
    benchmarks/RESULTS.md, "Second H200 lease"). A fused or vocab-parallel loss writes the logits' gradient in
    place of its softmax: nothing beyond logits_bytes."""
    return logits_per_rank(cfg, training, layout) * 8 if training.profile.eager_loss else 0.0


# The memory parts a printed table shows in one column (flopwise plan, flopwise train's pipeline table): the layer
# being recomputed with the saved activations, the eager loss's backward gradients beside the logits, autocast's
# weight copies with the framework's other tensors.
PRINTED_PARTS = {"params": ("params",), "grads": ("grads",), "optimizer": ("optimizer",),
                 "activations": ("activations", "recompute_layer"), "logits": ("logits", "loss_backward"),
                 "other": ("other", "weight_copies"), "total": ("total",)}


def in_flight(layout: Layout, stage: int, microbatches: int) -> float:
    """Micro-batches (in units of a whole stage's layers) whose activations stage `stage` holds at peak."""
    p, v, m = layout.pp, layout.vpp, microbatches
    if layout.schedule == "gpipe":
        return float(m)
    if layout.schedule == "interleaved" and v > 1:
        chunks = 2 * (p - stage - 1) + (v - 1) * p + 1
        return min(chunks, m * v) / v
    return float(min(p - stage, m))


def usable_bytes(memory_bytes: float) -> float:
    """Device memory left for tensors after the framework's reserve and the allocator's headroom."""
    return memory_bytes * (1 - ALLOCATOR_HEADROOM) - RESERVED_BYTES


# what a printed peak memory per GPU counts, as sources print it: torch's caching-allocator counters (torchtitan's
# "memory:" log line is max_memory_reserved), or the whole device's use (nvidia-smi, a profiler's device total)
MEMORY_MEASURES = ("reserved", "allocated", "device")


def tensor_bytes(planned_bytes: float) -> float:
    """A planned memory figure without the framework's reserve (RESERVED_BYTES, which a stage's `other` holds: the
    CUDA context, NCCL and cuBLAS workspaces): what the tensors take, as torch's allocator counters see them."""
    return planned_bytes - RESERVED_BYTES


def printed_counterpart(planned_peak_bytes: float, measure: str) -> float:
    """The planned figure to set against a printed peak of `measure` (blank: unstated, taken as torch's counters, what
    training scripts print): the whole planned peak for a device-wide figure, the tensors (tensor_bytes) for torch's
    counters. The allocator's cached blocks beyond the tensors (reserved minus allocated) are fragmentation the planner
    budgets as headroom (ALLOCATOR_HEADROOM), not a size it predicts, so a `reserved` figure should read above its
    counterpart by about that much where the activations are modelled right."""
    return planned_peak_bytes if measure == "device" else tensor_bytes(planned_peak_bytes)


def memory_error(planned_peak_bytes: float, printed_bytes: float, measure: str) -> float:
    """The planned peak's error against a printed one of `measure`: counterpart / printed - 1."""
    return printed_counterpart(planned_peak_bytes, measure) / printed_bytes - 1.0
