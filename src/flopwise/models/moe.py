"""Mixture-of-experts feed-forward layer: Yuan 2.0-M32 (arXiv 2405.17976) and a linear-router baseline.

A router scores the E experts for each token; the token goes to its top-k experts (SwiGLU, Shazeer 2020)
and its output is their outputs weighted by the renormalised top-k probabilities.

Routers (`ModelConfig.router`)
- "attention", Yuan 2.0-M32 section 2.2 (../shared/reference/yuan2.md): three bias-free linears h -> E give
  q, k, v in R^E per token; P = softmax(q k^T) v, with q k^T the E x E outer product and the softmax over
  each row; the probabilities are softmax(P). No 1/sqrt(d) scale, as in the public inference code. The
  three linears are held as one [3E, h] matrix (one GEMM; the same maths). Computed in fp32.
- "linear": logits = W x (Switch Transformer, Fedus et al. 2021; GShard, Lepikhin et al. 2020).
Then the top-k probabilities, renormalised to sum to 1.

Steps, kept apart so that expert parallelism can place experts on other ranks:
  route     -> Routing: top-k expert ids and weights per token, probabilities, logits
  plan      -> Dispatch: assignments sorted by expert id, the capacity limit applied, rows per expert
  dispatch  -> `self.dispatcher.dispatch`: THE ALL-TO-ALL HOOK. Sends each rank's rows to the rank holding
               their expert; LocalDispatcher (all experts here) moves nothing
  experts   -> GroupedExperts: the local experts [start, end) run on contiguous row blocks (no per-token loop)
  combine   -> `self.dispatcher.combine`: the reverse all-to-all; then weights applied, each token's k rows summed

Routing is dropless by default: every token reaches all of its top-k experts. With capacity_factor c > 0,
in training an expert takes at most ceil(c x T x k / E) of a batch's T x k assignments (Switch Transformer
eq. 3, times k for top-k); first choices go before second choices, then earlier tokens; the rest are
dropped (the token keeps its residual stream) and counted. Inference is always dropless, so decoding one
token at a time gives the full forward's outputs.

Auxiliary losses (training only), weighted by aux_loss_coef and z_loss_coef:
- load balance, Switch Transformer eq. 4-6 generalised to top-k as in GShard: E x sum_i f_i P_i, with f_i
  the fraction of the T x k assignments routed to expert i (before capacity; not differentiable) and P_i
  the mean router probability of expert i. 1.0 when perfectly balanced.
- router z-loss, ST-MoE (Zoph et al. 2022) eq. 5: mean over tokens of logsumexp(logits)^2.
Their weighted sum joins the backward pass through `_AttachAuxLoss` on the layer's output (the idea of
Megatron-LM's MoEAuxLossAutoScaler): the gradient of whatever loss is computed from the model carries it,
on every pipeline stage, with no change to the loss function. The engine sets the scale of that gradient
to its own loss scaling (1 / micro-batches) with `set_aux_loss_scale`. Under tensor parallelism every TP rank
computes the same losses and their gradients are summed: `aux_loss_share` (1 / tp, set by parallel/tensor.py)
makes that sum count them once. Values for logging accumulate in
the non-persistent `stats` buffer; `moe_metrics` reads and resets them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flopwise.errors import ConfigError
from flopwise.models.config import ModelConfig
from flopwise.models.mlp import SwiGLU

# stats buffer layout: forwards, balance-loss sum, z-loss sum, dropped assignments, assignments, then per expert
_FORWARDS, _BALANCE, _ZLOSS, _DROPPED, _ASSIGNED, _LOAD = range(6)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


@dataclass
class Routing:
    experts: torch.Tensor  # [T, k] expert ids, best first
    weights: torch.Tensor  # [T, k] renormalised top-k probabilities (fp32), each row sums to 1
    probs: torch.Tensor  # [T, E] softmax of the router logits (fp32)
    logits: torch.Tensor  # [T, E] router outputs before the softmax (fp32)


@dataclass
class Dispatch:
    slots: torch.Tensor  # [A] kept assignments as indices t * k + j into the [T, k] routing, grouped by expert id
    tokens: torch.Tensor  # [A] token of each kept assignment (slots // k)
    counts: torch.Tensor  # [E] kept assignments per expert (rows of each expert's block, in expert order)
    routed: torch.Tensor  # [E] assignments per expert before the capacity limit
    dropped: torch.Tensor  # () assignments dropped by the capacity limit


class AttentionRouter(nn.Module):
    """Yuan 2.0-M32's attention router: P = softmax(q k^T) v per token, q, k, v = W_q x, W_k x, W_v x in R^E."""

    def __init__(self, hidden: int, experts: int) -> None:
        super().__init__()
        self.experts = experts
        self.qkv = nn.Linear(hidden, 3 * experts, bias=False)  # rows: W_q, then W_k, then W_v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).split(self.experts, dim=-1)  # [T, E] each
        mix = torch.softmax(q.unsqueeze(-1) * k.unsqueeze(-2), dim=-1)  # [T, E, E]: row i is softmax_j(q_i k_j)
        return torch.matmul(mix, v.unsqueeze(-1)).squeeze(-1)


class LinearRouter(nn.Module):
    def __init__(self, hidden: int, experts: int) -> None:
        super().__init__()
        self.gate = nn.Linear(hidden, experts, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x)


def route(logits: torch.Tensor, top_k: int) -> Routing:
    """Softmax over experts, top-k, renormalised: the Yuan 2.0-M32 recipe (and Mixtral's)."""
    logits = _at_least_fp32(logits)
    probs = torch.softmax(logits, dim=-1)
    top, experts = probs.topk(top_k, dim=-1)
    return Routing(experts, top / top.sum(dim=-1, keepdim=True), probs, logits)


def expert_capacity(tokens: int, top_k: int, experts: int, factor: float) -> int:
    """Switch Transformer eq. 3 for top-k: ceil(factor x tokens x k / experts) assignments per expert."""
    return max(1, math.ceil(factor * tokens * top_k / experts))


def plan_dispatch(experts: torch.Tensor, num_experts: int, capacity: int | None = None) -> Dispatch:
    """Sort the [T, k] assignments by expert id; with a capacity, keep the first `capacity` of each expert.

    Within an expert, first choices come before second choices, then earlier tokens (GShard's priority)."""
    t, k = experts.shape
    choice_major = experts.t().reshape(-1)  # index j * T + t
    expert_of, order = torch.sort(choice_major, stable=True)
    slots = (order % t) * k + order // t
    routed = torch.bincount(choice_major, minlength=num_experts)
    dropped = torch.zeros((), dtype=torch.long, device=experts.device)
    counts = routed
    if capacity is not None:
        first = torch.cumsum(routed, 0) - routed
        keep = torch.arange(slots.numel(), device=slots.device) - first[expert_of] < capacity
        slots = slots[keep]
        counts = routed.clamp(max=capacity)
        dropped = (~keep).sum()
    return Dispatch(slots, slots // k, counts, routed, dropped)


def balance_loss(probs: torch.Tensor, routed: torch.Tensor) -> torch.Tensor:
    """E x sum_i f_i P_i (Switch Transformer eq. 4-6; GShard for top-k): f from the counts, P = mean probability."""
    f = routed.to(probs.dtype) / routed.sum().clamp(min=1)
    return probs.shape[-1] * torch.sum(f * probs.mean(dim=0))


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE eq. 5: mean over tokens of logsumexp(router logits)^2 (keeps the logits small)."""
    return torch.logsumexp(_at_least_fp32(logits), dim=-1).square().mean()


class _AttachAuxLoss(torch.autograd.Function):
    """Identity on `out`; the backward gives `aux` the gradient `scale`, so an auxiliary loss computed inside
    the model is back-propagated with the main loss without being returned (Megatron-LM's approach)."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, aux: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        ctx.aux_like = (aux.shape, aux.dtype, aux.device)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        shape, dtype, device = ctx.aux_like
        return grad, torch.full(shape, ctx.scale, dtype=dtype, device=device), None


class GroupedExperts(nn.Module):
    """`count` SwiGLU experts stacked on a leading expert dimension (expert parallelism shards dim 0):
    w1 (gate) and w3 (up) [count, ffn, hidden], w2 (down) [count, hidden, ffn]."""

    def __init__(self, count: int, hidden: int, ffn: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(count, ffn, hidden))
        self.w3 = nn.Parameter(torch.empty(count, ffn, hidden))
        self.w2 = nn.Parameter(torch.empty(count, hidden, ffn))

    @torch.no_grad()
    def reset_parameters(self, std: float, out_std: float, generator: torch.Generator | None = None) -> None:
        nn.init.normal_(self.w1, std=std, generator=generator)
        nn.init.normal_(self.w3, std=std, generator=generator)
        nn.init.normal_(self.w2, std=out_std, generator=generator)

    def forward(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """x: [A, hidden], rows grouped by local expert (counts[e] rows for expert e, in order).

        One GEMM per expert on its contiguous block. unbind (not w[e]) keeps the backward to one stack of
        the per-expert gradients; on CPU this measured the same as torch's grouped_mm (benchmarks/moe.py)."""
        outs = []
        w1, w3, w2 = self.w1.unbind(0), self.w3.unbind(0), self.w2.unbind(0)
        for e, rows in enumerate(x.split(counts)):
            if rows.shape[0]:
                outs.append(F.linear(F.silu(F.linear(rows, w1[e])) * F.linear(rows, w3[e]), w2[e]))
        if not outs:  # no rows here: still an output in the autograd graph of x and the weights, so that under
            # expert parallelism this rank runs the combine's backward all-to-all like its peers (else they hang)
            rows = x[:0]
            return F.linear(F.silu(F.linear(rows, w1[0])) * F.linear(rows, w3[0]), w2[0])
        return torch.cat(outs) if len(outs) > 1 else outs[0]


class LocalDispatcher:
    """All experts on this rank: dispatch and combine move nothing.

    The interface an expert-parallel dispatcher implements (flopwise.parallel.expert.AllToAllDispatcher,
    all-to-all over the `ep` group):

    dispatch(rows, counts, start, end) -> (local_rows, local_counts, handle)
        rows [A, h]: this rank's kept assignments grouped by global expert id (ascending); counts [E]:
        rows per global expert. Returns the rows every rank sends to this rank's experts [start, end),
        grouped by local expert, with their counts (list[int], end - start long), and whatever combine
        needs. With contiguous expert ranges per rank: all_to_all_single of the counts (so each rank
        knows what it receives), all_to_all_single of the rows with split sizes summed per destination,
        then a permutation from (source rank, expert) order to (expert, source rank) order.
    combine(local_out, handle) -> out [A, h]: the inverse permutation and all-to-all, rows back in the
        order of `rows`.
    """

    def dispatch(self, rows: torch.Tensor, counts: torch.Tensor, start: int, end: int):
        if start != 0 or end != counts.numel():
            raise ConfigError(
                f"experts [{start}, {end}) of {counts.numel()} are local but the dispatcher moves no tokens; "
                "expert parallelism needs an all-to-all dispatcher"
            )
        return rows, counts.tolist(), None

    def combine(self, out: torch.Tensor, handle) -> torch.Tensor:
        return out


class MoEFeedForward(nn.Module):
    """The MoE FFN of one block. `local_experts` is the range of expert ids held here (default: all)."""

    def __init__(self, cfg: ModelConfig, local_experts: range | None = None) -> None:
        super().__init__()
        if not cfg.experts:
            raise ConfigError("MoEFeedForward needs model.experts > 0")
        local = local_experts if local_experts is not None else range(cfg.experts)
        if local.step != 1 or not 0 <= local.start < local.stop <= cfg.experts:
            raise ConfigError(f"local experts {local} must be a contiguous, non-empty part of range({cfg.experts})")
        self.num_experts = cfg.experts
        self.top_k = cfg.top_k
        self.expert_start, self.expert_end = local.start, local.stop
        self.capacity_factor = cfg.capacity_factor
        self.aux_loss_coef = cfg.aux_loss_coef
        self.z_loss_coef = cfg.z_loss_coef
        router = AttentionRouter if cfg.router == "attention" else LinearRouter
        self.router = router(cfg.hidden, cfg.experts)
        self.experts = GroupedExperts(len(local), cfg.hidden, cfg.ffn)
        # the shared expert every token passes besides its routed ones (DeepSeekMoE, arXiv 2401.06066): a dense
        # SwiGLU, held whole on every expert-parallel rank and cut by tensor parallelism like a dense MLP
        self.shared = SwiGLU(cfg.hidden, cfg.shared_ffn) if cfg.shared_ffn else None
        self.dispatcher = LocalDispatcher()
        self.aux_loss_scale = 1.0  # gradient given to the auxiliary loss; the engine sets its loss scaling
        self.aux_loss_share = 1.0  # this copy's share of that gradient (tensor parallelism: 1 / tp per rank)
        self.register_buffer("stats", torch.zeros(_LOAD + cfg.experts, dtype=torch.float64), persistent=False)

    @torch.no_grad()
    def reset_parameters(self, std: float, out_std: float, generator: torch.Generator | None = None) -> None:
        """Expert weights and logging state; the router's nn.Linear is initialised by the model like any other."""
        self.experts.reset_parameters(std, out_std, generator)
        self.stats.zero_()

    @torch.no_grad()
    def keep_experts(self, start: int, end: int, dispatcher) -> None:
        """Keep only the global experts [start, end) of those held (expert parallelism, applied from outside
        like tensor.py's shards): slices the stacked weights along dim 0 and installs the dispatcher."""
        if not self.expert_start <= start < end <= self.expert_end:
            raise ConfigError(f"experts [{start}, {end}) are not within the held [{self.expert_start}, {self.expert_end})")
        lo, hi = start - self.expert_start, end - self.expert_start
        for name in ("w1", "w3", "w2"):
            weight = getattr(self.experts, name)
            setattr(self.experts, name, nn.Parameter(weight[lo:hi].clone(), requires_grad=weight.requires_grad))
        self.expert_start, self.expert_end = start, end
        self.dispatcher = dispatcher

    # -- the steps ---------------------------------------------------------------------------------
    def route(self, x: torch.Tensor) -> Routing:
        """x: [T, h]. The router runs in fp32 (as Yuan's --use-fp32-router), outside any autocast."""
        with torch.autocast(x.device.type, enabled=False):
            logits = self.router(_at_least_fp32(x))
        return route(logits, self.top_k)

    def capacity(self, tokens: int) -> int | None:
        if not self.training or self.capacity_factor <= 0:
            return None
        return expert_capacity(tokens, self.top_k, self.num_experts, self.capacity_factor)

    def run_experts(self, x: torch.Tensor, routing: Routing, plan: Dispatch) -> torch.Tensor:
        """Dispatch, compute the local experts, combine: [T, h] -> [T, h]."""
        t, h = x.shape
        rows = x[plan.tokens]  # permute: rows grouped by expert id
        local, local_counts, handle = self.dispatcher.dispatch(rows, plan.counts, self.expert_start, self.expert_end)
        out = self.dispatcher.combine(self.experts(local, local_counts), handle)
        out = out * routing.weights.reshape(-1)[plan.slots].unsqueeze(-1).to(out.dtype)
        # each token's k rows summed in a fixed order (deterministic, unlike index_add_ on GPU); dropped slots are 0
        per_slot = out.new_zeros(t * self.top_k, h).index_copy(0, plan.slots, out)
        return per_slot.view(t, self.top_k, h).sum(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        routing = self.route(flat)
        plan = plan_dispatch(routing.experts, self.num_experts, self.capacity(flat.shape[0]))
        out = self.run_experts(flat, routing, plan)
        if self.training:
            out = self._auxiliary(out, routing, plan)
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.view(shape)

    @staticmethod
    def aux_losses(routing: Routing, plan: Dispatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(load-balance loss, router z-loss) of this batch, unweighted, differentiable in the router."""
        return balance_loss(routing.probs, plan.routed), z_loss(routing.logits)

    def _auxiliary(self, out: torch.Tensor, routing: Routing, plan: Dispatch) -> torch.Tensor:
        """Record the auxiliary losses for logging and attach their weighted sum to the backward of `out`."""
        balance, z = self.aux_losses(routing, plan)
        with torch.no_grad():
            s = self.stats
            s[_FORWARDS] += 1
            s[_BALANCE] += balance.detach().double()
            s[_ZLOSS] += z.detach().double()
            s[_DROPPED] += plan.dropped.double()
            s[_ASSIGNED] += routing.experts.numel()
            s[_LOAD:] += plan.routed.double()
        aux = self.aux_loss_coef * balance + self.z_loss_coef * z
        if torch.is_grad_enabled() and aux.requires_grad and (self.aux_loss_coef or self.z_loss_coef):
            out = _AttachAuxLoss.apply(out, aux, self.aux_loss_scale * self.aux_loss_share)
        return out


# -- whole-model helpers (the engine and the trainer use these; the model stays parallelism-free) -----------
def moe_layers(model: nn.Module | None) -> list[tuple[str, MoEFeedForward]]:
    if model is None:
        return []
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MoEFeedForward)]


def set_aux_loss_scale(model: nn.Module, scale: float) -> None:
    """The gradient the auxiliary losses get: the engine's scaling of the main loss (1 / micro-batches)."""
    for _, layer in moe_layers(model):
        layer.aux_loss_scale = scale


def expert_load(model: nn.Module | None) -> dict[str, list[float]]:
    """Assignments routed to each expert per MoE layer since the last reset (training forwards only)."""
    return {name: layer.stats[_LOAD:].tolist() for name, layer in moe_layers(model)}


def moe_metrics(model: nn.Module | None, reset: bool = True) -> dict[str, float]:
    """Means over the MoE layers and the training forwards since the last reset; {} for a dense model.

    moe_balance_loss (1.0 = balanced), moe_z_loss, moe_max_load (busiest expert's assignments over the
    mean; 1.0 = balanced, E / k = all on k experts), moe_dropped (fraction of assignments dropped)."""
    rows = [layer.stats.tolist() for _, layer in moe_layers(model)]
    rows = [r for r in rows if r[_FORWARDS] > 0]
    if reset:
        for _, layer in moe_layers(model):
            layer.stats.zero_()
    if not rows:
        return {}
    n = len(rows)
    loads = [r[_LOAD:] for r in rows]
    return {
        "moe_balance_loss": round(sum(r[_BALANCE] / r[_FORWARDS] for r in rows) / n, 6),
        "moe_z_loss": round(sum(r[_ZLOSS] / r[_FORWARDS] for r in rows) / n, 6),
        "moe_max_load": round(sum(max(x) * len(x) / max(sum(x), 1.0) for x in loads) / n, 4),
        "moe_dropped": round(sum(r[_DROPPED] for r in rows) / max(sum(r[_ASSIGNED] for r in rows), 1.0), 6),
    }
