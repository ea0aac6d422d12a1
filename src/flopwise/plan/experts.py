"""Mixture of experts in the cost model: expert memory per rank under expert parallelism, the all-to-all
it adds, and load imbalance. The active compute is already flops.py's (block_gemms count the top_k experts
a token visits and the router), so a dense model and an MoE model with ep = 1 cost the same way.

Memory. A rank of an ep group holds E / ep of each MoE layer's experts, each cut by tp (expert tensor
parallelism: w1/w3 column-, w2 row-parallel; flopwise.parallel.tensor). The trainer keeps expert weights
out of the dense model's FSDP and dp_shard partition (ep already splits them; flopwise.parallel.expert)
and applies the ZeRO stage to them over the dp / ep ranks that hold the same experts (ep_dp;
flopwise.parallel.parallelize): ZeRO-1 partitions their optimizer state, ZeRO-2/3 put them under their own
FSDP over ep_dp (gradients, and with 3 weights, sharded; ZeRO-3 gathers this rank's experts of a layer).
With ep = 1 the experts are ordinary parameters, sharded with the rest. With ep > 1 their gradients cross
only the ep_dp ranks too (CostModel.dp_time: collectives of their own beside the dense ones; none when
ep = dp), and under ZeRO the optimizer step updates this rank's 1 / ep_dp share of them.

Tensor parallelism. The expert GEMMs are in block_gemms with their column/row cut, so the cost model's
per-rank GEMM time and the activations' TP-split share already divide them by tp; the MoE layer's partial
outputs are summed over tp by the same collective as a dense MLP's (layer_cost's tp time counts it), and
the router, replicated, computes on every TP rank (its weights are in the replicated share).

MoE parallel folding (Megatron-Core; Liu et al. 2025, arXiv 2504.14960): an expert TP `etp` below tp regroups the
attention's tp x dp ranks into ep x etp x expert_dp for the MoE layers. Each rank then holds E / ep experts cut by
etp, dispatches its own sequence-parallel share of the tokens over an ep group of ep x etp consecutive GPUs, and the
MLP's TP collectives vanish (a shared expert, run with the attention's TP, keeps them). The expert GEMMs' FLOPs per
rank are the same under either cut (1 / tp of the micro-batch's), so they are costed as before.

All-to-all (GShard, Lepikhin et al. 2020; Megatron-LM's token dispatcher). Per MoE layer and micro-batch a
rank sends its s b top_k token rows of h values to the ranks holding their experts and gets them back:
dispatch and combine in the forward, their reverses in the backward (4 exchanges; 2 more in a forward
recomputed under full recomputation). With balanced routing (ep - 1) / ep of the rows leave the rank; the
busiest rank receives `imbalance` times the mean. An ep group is ep consecutive data-parallel ranks, with
tp innermost, so it spans tp x ep GPUs (each TP rank of an ep rank sends the same rows over its own ep
group, the tp exchanges side by side): inside a node it runs on NVLink, beyond one on the network, at
the link's bus bandwidth per GPU (hardware.py efficiencies) plus a call latency (and one more for the
exchange of the row counts).

Imbalance (Training.expert_imbalance, >= 1): the busiest rank's expert tokens over the mean. The step
waits for it, so the expert GEMMs and the all-to-all are scaled by it (1.0: perfectly balanced routing;
moe_max_load in the trainer's metrics measures it per expert)."""

from __future__ import annotations

from flopwise.flops import block_gemms
from flopwise.hardware import COLLECTIVE_LATENCY_S
from flopwise.layout import Layout
from flopwise.plan import memory as mem

# Host time per MoE block and micro-batch, forward and backward, exposed: the router, the permutation, the grouped
# GEMMs' setup, and under a dropless dispatcher a host sync on the token counts, which stops the host running ahead
# (FINDINGS.md section 66: the runs under a full-iteration CUDA graph were planned 21% slow, the rest 28% fast). One
# constant fitted by least median |error| on the 98 costed MoE runs of sets 50 and 52, bounded to [0, 10 ms]
# (benchmarks/planner_moe_host_fit.py); a run whose whole step is one CUDA graph (Training.cuda_graphs) has none.
MOE_BLOCK_HOST_S = 6.7e-3  # in sample 36.4% -> 21.8% median, max 273% -> 321%; grouped 5-fold CV 23.5% / 318%;
# adopted on set 53 (blind, 4 runs) as declared: 37.4% -> 28.0%, max 89.3% -> 88.0% (FINDINGS.md section 67)


def ep_nodes(ep: int, expert_tp: int, gpus_per_node: int) -> int:
    """Nodes an expert-parallel group of `ep` ranks, each `expert_tp` GPUs wide, spans (1: inside one node, where its
    all-to-all runs on NVLink; beyond, moe_layer_time prices it at the network's rate)."""
    return max(1, -(-ep * expert_tp // gpus_per_node))


def expert_params_per_layer(cfg) -> int:
    """Weights of all experts of one MoE layer (0 for a dense model)."""
    return sum(g.weights for g in block_gemms(cfg) if g.name.startswith("expert_"))


def experts_apart(layout: Layout) -> bool:
    """Whether the experts are split otherwise than the dense weights: over ep ranks, or by an etp other than tp."""
    return layout.ep > 1 or bool(layout.etp)


def expert_params_per_rank(cfg, layout: Layout) -> float:
    """Expert weights of one MoE layer on one rank: E / ep experts, each cut by etp (tp unless stated)."""
    return expert_params_per_layer(cfg) / (layout.ep * layout.expert_tp)


def expert_params_elsewhere(cfg, layout: Layout, layers: int) -> float:
    """Of `layers` layers' experts in this rank's TP cut (all E, 1 / tp of each), the weights this rank does not
    hold: those of the other ranks of its ep group (negative where etp < tp keeps more of each expert than tp would)."""
    return layers * (expert_params_per_layer(cfg) / layout.tp - expert_params_per_rank(cfg, layout))


def expert_params_not_gathered(cfg, layout: Layout) -> float:
    """Expert weights of one layer's TP cut that ZeRO-3 does not gather on this rank: those of the other
    ranks of the ep group, and where no other rank holds the same experts (expert_dp = 1) this rank's own as well."""
    cut = expert_params_per_layer(cfg) / layout.tp
    if not experts_apart(layout):
        return 0.0
    return cut if layout.expert_dp == 1 else cut - expert_params_per_rank(cfg, layout)


def model_states(cfg, precision: str, layout: Layout, params: float, layers: int, profile=None) -> dict[str, float]:
    """Parameter, gradient and optimizer bytes of one rank holding `params` parameters (its experts
    included, E / ep per layer cut by etp): ZeRO shards the non-expert part over the shard group and, under
    ep or etp, the experts over the expert_dp ranks holding the same experts; `profile`: the stack's
    (memory.model_state_bytes)."""
    shard = layout.shard_degree * layout.cp
    if not experts_apart(layout):
        return mem.model_state_bytes(params, precision, layout.zero, shard, profile)
    experts = layers * expert_params_per_rank(cfg, layout)
    out = mem.model_state_bytes(params - experts, precision, layout.zero, shard, profile)
    own = mem.model_state_bytes(experts, precision, layout.zero, layout.expert_dp, profile)
    return {k: out[k] + own[k] for k in out}


def expert_gemm_time(cm, layout: Layout) -> float:
    """Forward + backward seconds of one layer's expert GEMMs (this rank's TP cut) for one micro-batch
    (balanced routing)."""
    tokens = cm.seq * layout.micro_batch
    return 3.0 * sum(g.count * cm.gemm_time(tokens, *cm._sharded(g, layout.tp))
                     for g in cm.gemms if g.name.startswith("expert_"))


def moe_layer_time(cm, layout: Layout, imbalance: float) -> tuple[float, float]:
    """(extra compute of the busiest rank, exposed all-to-all) seconds per MoE layer and micro-batch."""
    cfg = cm.model
    if not cfg.experts:
        return 0.0, 0.0
    compute = (imbalance - 1.0) * expert_gemm_time(cm, layout)
    if layout.ep == 1:
        return compute, 0.0
    # each rank sends its 1 / (tp / etp) of the micro-batch's tokens (etp = tp: all of them, each TP rank over its own
    # ep group side by side; etp 1: its sequence-parallel shard, the ep group folded over the attention's TP ranks)
    tokens = cm.seq * layout.micro_batch * layout.expert_tp / layout.tp
    rows = tokens * cfg.top_k * cfg.hidden * cm.training.dtype_bytes
    moved = rows * (layout.ep - 1) / layout.ep * imbalance
    # (an all-to-all: every pair of the group at once, over all its links on a mesh)
    span = layout.expert_tp * layout.ep
    one = moved / cm.bus_bandwidth(span, members=layout.ep) + 2 * COLLECTIVE_LATENCY_S  # counts, rows
    exchanges = 4 + (2 / layout.recompute_every if layout.recompute == "full" else 0)
    return compute, exchanges * one


def moe_host_time(cm, layout: Layout) -> float:
    """Seconds of host time an MoE block adds per micro-batch, forward and backward (MOE_BLOCK_HOST_S; 0 for a dense
    model or a step under a full CUDA graph)."""
    return MOE_BLOCK_HOST_S if cm.model.experts and not cm.training.cuda_graphs else 0.0


def expert_degrees(cfg, dp: int) -> list[int]:
    """The ep degrees the search tries with `dp` data-parallel ranks: divisors of dp that divide the experts."""
    if not cfg.experts:
        return [1]
    return [e for e in range(1, dp + 1) if dp % e == 0 and cfg.experts % e == 0]
