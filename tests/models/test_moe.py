import pytest
import torch
import torch.nn.functional as F

from flopwise.errors import ConfigError
from flopwise.models import KVCache, Transformer, document_segments, get_preset
from flopwise.models.config import ModelConfig
from flopwise.models.moe import (
    LocalDispatcher,
    MoEFeedForward,
    balance_loss,
    expert_capacity,
    expert_load,
    moe_metrics,
    plan_dispatch,
    route,
    set_aux_loss_scale,
    z_loss,
)

CFG = get_preset("nano-moe")  # hidden 64, 4 experts of 64, top-2, attention router


def _layer(seed=0, **changes) -> MoEFeedForward:
    torch.manual_seed(seed)
    layer = MoEFeedForward(CFG.replace(**changes))
    with torch.no_grad():  # larger than the model's init, so routing is far from uniform and ties are unlikely
        for p in layer.parameters():
            p.normal_(0, 0.5)
    return layer


def _swiglu(layer: MoEFeedForward, e: int, x: torch.Tensor) -> torch.Tensor:
    ex = layer.experts
    return ex.w2[e] @ (F.silu(ex.w1[e] @ x) * (ex.w3[e] @ x))


def test_attention_router_is_softmax_of_the_outer_product_times_v_then_top_k_renormalised():
    layer = _layer()
    x = torch.randn(5, CFG.hidden)
    routing = layer.route(x)
    wq, wk, wv = layer.router.qkv.weight.split(CFG.experts)
    for t in range(5):  # the formula of yuan2.md, one token at a time
        q, k, v = wq @ x[t], wk @ x[t], wv @ x[t]
        scores = torch.outer(q, k)  # E x E: scores[i, j] = q_i k_j
        attn = torch.exp(scores) / torch.exp(scores).sum(dim=1, keepdim=True)
        p = attn @ v
        probs = torch.exp(p) / torch.exp(p).sum()
        top = sorted(range(CFG.experts), key=lambda i: -probs[i].item())[: CFG.top_k]
        torch.testing.assert_close(routing.logits[t], p, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(routing.probs[t], probs, rtol=1e-5, atol=1e-6)
        assert routing.experts[t].tolist() == top
        torch.testing.assert_close(routing.weights[t], probs[top] / probs[top].sum(), rtol=1e-5, atol=1e-6)


def test_linear_router_logits_are_a_plain_projection():
    layer = _layer(router="linear")
    x = torch.randn(6, CFG.hidden)
    torch.testing.assert_close(layer.route(x).logits, x @ layer.router.gate.weight.T)


@pytest.mark.parametrize("router", ["attention", "linear"])
def test_dropless_layer_equals_the_weighted_sum_of_each_tokens_experts(router):
    layer = _layer(router=router).train()
    x = torch.randn(2, 9, CFG.hidden)
    out = layer(x)
    flat = x.reshape(-1, CFG.hidden)
    routing = layer.route(flat)
    expected = torch.stack([
        sum(w * _swiglu(layer, e, flat[t]) for e, w in zip(routing.experts[t].tolist(), routing.weights[t], strict=True))
        for t in range(flat.shape[0])
    ])
    torch.testing.assert_close(out.reshape(-1, CFG.hidden), expected, rtol=1e-4, atol=1e-5)
    assert moe_metrics(torch.nn.ModuleList([layer]))["moe_dropped"] == 0.0


def test_a_shared_expert_adds_a_dense_swiglu_every_token_passes():
    """DeepSeekMoE's shared expert (model.shared_ffn): the routed experts' weighted sum plus a SwiGLU of that width."""
    layer = _layer(router="linear", shared_ffn=48).train()
    routed = _layer(router="linear").train()  # the same seed: the same router and experts, no shared expert
    routed.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith("shared.")})
    x = torch.randn(2, 7, CFG.hidden)
    sh = layer.shared
    expected = routed(x) + sh.w2(F.silu(sh.w1(x)) * sh.w3(x))
    torch.testing.assert_close(layer(x), expected)
    assert sh.w1.weight.shape == (48, CFG.hidden) and sh.w2.weight.shape == (CFG.hidden, 48)
    # its weights are ordinary (dense) parameters that every token's gradient reaches
    layer(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in sh.parameters())


def test_dropless_plan_keeps_every_assignment_grouped_by_expert():
    torch.manual_seed(1)
    routing = route(torch.randn(50, 6), top_k=2)
    plan = plan_dispatch(routing.experts, 6)
    assert sorted(plan.slots.tolist()) == list(range(100))  # every (token, choice) exactly once
    assert plan.counts.sum() == 100 and plan.dropped == 0
    assert torch.equal(plan.counts, torch.bincount(routing.experts.flatten(), minlength=6))
    grouped = routing.experts.flatten()[plan.slots]
    assert torch.equal(grouped, grouped.sort().values)  # rows are contiguous per expert, ascending
    assert torch.equal(plan.tokens, plan.slots // 2)
    torch.testing.assert_close(routing.weights.sum(-1), torch.ones(50))


def test_capacity_keeps_first_choices_first_and_counts_drops():
    experts = torch.tensor([[0, 1], [0, 1], [1, 0], [0, 2]])  # expert 0: 3 first choices + 1 second choice
    plan = plan_dispatch(experts, 3, capacity=2)
    kept = {(s // 2, s % 2) for s in plan.slots.tolist()}
    assert (0, 0) in kept and (1, 0) in kept and (3, 0) not in kept and (2, 1) not in kept
    assert plan.counts.tolist() == [2, 2, 1] and plan.routed.tolist() == [4, 3, 1]
    assert plan.dropped.item() == 8 - 5
    assert expert_capacity(tokens=4, top_k=2, experts=3, factor=0.75) == 2


def test_capacity_drops_in_training_only_and_the_metrics_count_them():
    layer = _layer(capacity_factor=0.5)
    x = torch.randn(1, 16, CFG.hidden)
    layer.train()
    trained = layer(x)
    metrics = moe_metrics(torch.nn.ModuleList([layer]))
    assert metrics["moe_dropped"] >= 0.5  # capacity 0.5 keeps at most half the assignments
    layer.eval()
    with torch.no_grad():
        full = layer(x)
    assert not torch.allclose(trained, full)  # dropped assignments contributed nothing in training
    assert moe_metrics(torch.nn.ModuleList([layer])) == {}  # eval forwards are not counted


def test_balance_and_z_loss_gradients_pass_gradcheck():
    torch.manual_seed(2)
    logits = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    routed = torch.bincount(logits.topk(2).indices.flatten(), minlength=5)  # constant, as in the layer
    assert torch.autograd.gradcheck(lambda z: balance_loss(torch.softmax(z, -1), routed), (logits,))
    assert torch.autograd.gradcheck(z_loss, (logits,))


def test_balance_loss_is_one_when_balanced_and_e_over_k_when_collapsed():
    e = 4
    uniform = torch.full((8, e), 1.0 / e)
    assert balance_loss(uniform, torch.full((e,), 4)).item() == pytest.approx(1.0)
    collapsed = torch.zeros(8, e)
    collapsed[:, :2] = 0.5
    assert balance_loss(collapsed, torch.tensor([8, 8, 0, 0])).item() == pytest.approx(2.0)  # E / k


def test_auxiliary_losses_reach_the_router_through_the_backward_with_the_engines_scale():
    # float64: the main loss's router gradient is large, and the check subtracts it
    x = torch.randn(1, 10, CFG.hidden, dtype=torch.float64)
    g = torch.randn(1, 10, CFG.hidden, dtype=torch.float64)

    def router_grad(aux_coef, z_coef, scale):
        layer = _layer(seed=3, aux_loss_coef=aux_coef, z_loss_coef=z_coef).double().train()
        set_aux_loss_scale(torch.nn.ModuleList([layer]), scale)
        (layer(x) * g).sum().backward()
        return layer.router.qkv.weight.grad

    plain = router_grad(0.0, 0.0, 1.0)
    layer = _layer(seed=3).double()
    routing = layer.route(x.reshape(-1, CFG.hidden))
    routed = torch.bincount(routing.experts.flatten(), minlength=CFG.experts)
    aux = 0.1 * balance_loss(routing.probs, routed) + 0.01 * z_loss(routing.logits)
    (aux_grad,) = torch.autograd.grad(aux, layer.router.qkv.weight)
    torch.testing.assert_close(router_grad(0.1, 0.01, 0.25) - plain, 0.25 * aux_grad, rtol=1e-6, atol=1e-9)


class _TwoRankSimulation:
    """The dispatcher interface exercised in one process: the rows for experts [2, 4) are computed by the
    `remote` layer (what an all-to-all would send to rank 1 and bring back)."""

    def __init__(self, remote: MoEFeedForward):
        self.remote = remote

    def dispatch(self, rows, counts, start, end):
        split = int(counts[:end].sum())
        return rows[:split], counts[start:end].tolist(), (rows[split:], counts[end:].tolist())

    def combine(self, local_out, handle):
        remote_rows, remote_counts = handle
        return torch.cat([local_out, self.remote.experts(remote_rows, remote_counts)])


def test_experts_split_over_two_ranges_match_the_whole_layer_through_the_dispatcher_hook():
    full = _layer(seed=4).eval()
    x = torch.randn(3, 7, CFG.hidden)
    with torch.no_grad():
        expected = full(x)
    # built with a part of the experts, loaded from the full layer's weights sliced along the expert dim
    remote = MoEFeedForward(CFG, local_experts=range(2, 4)).eval()
    remote.load_state_dict({k: v[2:] if k.startswith("experts.") else v for k, v in full.state_dict().items()})
    full.keep_experts(0, 2, _TwoRankSimulation(remote))  # cut in place, as expert parallelism will
    assert full.experts.w1.shape[0] == 2 and (full.expert_start, full.expert_end) == (0, 2)
    with torch.no_grad():
        torch.testing.assert_close(full(x), expected, rtol=1e-5, atol=1e-6)
        with pytest.raises(ConfigError, match="all-to-all"):
            remote(x)  # part of the experts with the local dispatcher: refused, not silently wrong
    with pytest.raises(ConfigError, match="not within"):
        remote.keep_experts(0, 3, LocalDispatcher())


def _model(router: str, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(CFG.replace(router=router)).eval()


@pytest.mark.parametrize("router", ["attention", "linear"])
def test_moe_decoding_token_by_token_matches_the_full_forward(router):
    model = _model(router, seed=1)
    tokens = torch.randint(0, CFG.vocab_size, (2, 20))
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache(model.cfg, batch=2, max_len=20)
        steps = [model(tokens[:, :6], cache=cache)] + [model(tokens[:, t : t + 1], cache=cache) for t in range(6, 20)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)


def test_moe_packed_batch_matches_each_document_alone():
    model = _model("attention")
    docs = [torch.cat([torch.randint(1, CFG.vocab_size, (n,)), torch.tensor([0])]) for n in (6, 11)]
    packed = torch.cat(docs).unsqueeze(0)
    with torch.no_grad():
        logits = model(packed, document_segments(packed, 0))
        start = 0
        for doc in docs:
            torch.testing.assert_close(logits[0, start : start + len(doc)], model(doc.unsqueeze(0))[0], rtol=1e-4, atol=1e-4)
            start += len(doc)


def test_expert_load_counts_every_training_assignment():
    torch.manual_seed(5)
    model = Transformer(CFG).train()
    model(torch.randint(0, CFG.vocab_size, (2, 16)))
    load = expert_load(model)
    assert list(load) == [f"layers.{i}.mlp" for i in range(CFG.layers)]
    assert all(sum(counts) == 2 * 16 * CFG.top_k for counts in load.values())
    metrics = moe_metrics(model)
    assert set(metrics) == {"moe_balance_loss", "moe_z_loss", "moe_max_load", "moe_dropped"}
    assert 1.0 <= metrics["moe_max_load"] <= CFG.experts / CFG.top_k
    assert moe_metrics(model) == {}  # reset after reading
    assert moe_metrics(Transformer(get_preset("nano"))) == {}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"experts": 4, "top_k": 5}, "model.top_k = 5"),
        ({"experts": 4, "router": "hash"}, "model.router = 'hash'"),
        ({"experts": 4, "mlp": "gelu"}, "model.mlp = 'gelu'"),
        ({"experts": 4, "capacity_factor": -1.0}, "model.capacity_factor"),
        ({"experts": -2}, "model.experts = -2"),
        ({"attn_dim": 100}, "model.attn_dim = 100"),
        ({"shared_ffn": 64}, "shared experts need model.experts > 0"),
        ({"experts": 4, "shared_ffn": -1}, "model.shared_ffn = -1"),
    ],
)
def test_bad_moe_settings_name_the_key(changes, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**changes)


def test_info_reports_total_and_active_parameters():
    from flopwise.models.info import model_info

    moe, dense = model_info("yuan2-m32"), model_info("yuan2-2b")
    assert moe["params"] > 10 * moe["active_params"] and moe["experts"] == 32 and moe["head_dim"] == 256
    assert dense["active_params"] == dense["params"] and "experts" not in dense
    assert "shared_ffn" not in moe


def test_experts_with_no_rows_still_join_the_backward():
    """An expert-parallel rank that receives no rows must still run the combine's backward all-to-all with its
    peers: its (empty) output stays in the autograd graph, and its expert weights get zero gradients."""
    from flopwise.models.moe import GroupedExperts

    experts = GroupedExperts(2, hidden=8, ffn=16)
    experts.reset_parameters(0.02, 0.02)
    x = torch.randn(0, 8, requires_grad=True)
    out = experts(x, [0, 0])
    assert out.shape == (0, 8) and out.requires_grad
    out.sum().backward()
    assert experts.w1.grad is not None and torch.count_nonzero(experts.w1.grad) == 0
