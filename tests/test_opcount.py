"""The op counts the planner's host-time term rests on: counted, not assumed."""

import torch

from flopwise.models.config import get_preset
from flopwise.opcount import count_ops, model_ops, narrow, training_step


def test_count_ops_counts_the_forward_and_its_backward_apart():
    x = torch.ones(3, requires_grad=True)
    forward, backward = count_ops(lambda: (x * 2).sum())
    assert forward == 2  # mul, sum
    assert backward >= 2  # at least the gradients of sum and mul
    assert x.grad is not None and torch.equal(x.grad, torch.full((3,), 2.0))


def test_a_block_is_the_difference_of_two_depths_and_follows_the_structure():
    tiny = get_preset("tiny")
    ops = model_ops(tiny)
    one = count_ops(training_step(narrow(tiny, 1)))
    assert ops.block[0] + ops.rest[0] == one[0] and ops.block[1] + ops.rest[1] == one[1]
    assert min(*ops.block, *ops.rest) > 0 and ops.block[1] > ops.block[0]  # the backward dispatches more
    # the widths do not matter, the structure does: LFA's filters and a mixture's experts dispatch more
    assert model_ops(tiny.replace(hidden=512, ffn=1024)) == ops
    assert sum(model_ops(tiny.replace(lfa=False)).block) < sum(ops.block)
    assert sum(model_ops(get_preset("tiny-moe")).block) > sum(ops.block)
    # and so does the rest: a model's head and loss, whatever its depth
    assert model_ops(tiny.replace(layers=12)).rest == ops.rest
