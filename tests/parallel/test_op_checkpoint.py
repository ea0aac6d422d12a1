"""The trainer's per-op selective checkpointing (parallel.recompute = "op") changes memory, not arithmetic."""

import copy

import pytest
import torch
import torch.nn.functional as F

from flopwise.models import Transformer
from flopwise.models.config import ModelConfig
from flopwise.parallel.parallelize import apply_recompute


@pytest.mark.parametrize("lfa", [False, True])
def test_op_checkpointing_gives_the_gradients_of_no_recomputation_bit_for_bit(lfa):
    cfg = ModelConfig(512, 2, 64, 4, 2, 128, 64, lfa=lfa)
    torch.manual_seed(0)
    plain = Transformer(cfg)
    checkpointed = copy.deepcopy(plain)
    apply_recompute(checkpointed, "op")
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))
    grads = []
    for model in (plain, checkpointed):
        loss = F.cross_entropy(model(tokens).view(-1, cfg.vocab_size), tokens.view(-1))
        loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.equal(grads[0][name], grads[1][name]) for name in grads[0])
