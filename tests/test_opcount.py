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
    # the widths do not matter (the model at its own widths dispatches what the narrow copy does), the structure
    # does: LFA's filters and a mixture's experts dispatch more
    assert count_ops(training_step(tiny.replace(layers=1))) == one
    assert count_ops(training_step(tiny.replace(layers=1, hidden=512, ffn=1024, seq_len=64))) == one
    assert sum(model_ops(tiny.replace(lfa=False)).block) < sum(ops.block)
    with torch.inference_mode():  # a caller holding autograd off (serving, evaluation) still gets the count
        from flopwise.opcount import _narrow_ops

        assert _narrow_ops.__wrapped__(narrow(tiny, 1)) == ops
    assert sum(model_ops(get_preset("tiny-moe")).block) > sum(ops.block)


def test_counting_does_not_import_the_compiler():
    """A dispatch mode imports torch._dynamo on its first op unless told not to: seconds at every CPU start-up."""
    import subprocess
    import sys

    code = ("import sys; from flopwise.opcount import model_ops; from flopwise.models.config import get_preset; "
            "model_ops(get_preset('nano')); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
