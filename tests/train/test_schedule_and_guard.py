import math

import pytest

from flopwise.train.config import GuardSection
from flopwise.train.loss_guard import LossGuard, Verdict
from flopwise.train.schedule import lr_at


def test_warmup_is_linear_then_cosine_reaches_min_lr():
    kw = dict(lr=1.0, min_lr=0.1, warmup=10, total=110)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert all(lr_at(s, **kw) >= lr_at(s + 1, **kw) for s in range(10, 120))


def test_guard_skips_spikes_and_non_finite_then_asks_for_rollback():
    guard = LossGuard(GuardSection(spike_factor=2.0, window=5, min_history=3, max_consecutive=3))
    for loss in (4.0, 3.9, 3.8):
        assert guard.check(loss) is Verdict.OK
    assert guard.check(9.0) is Verdict.SKIP
    assert guard.check(float("nan")) is Verdict.SKIP
    assert guard.check(float("inf")) is Verdict.ROLLBACK
    assert (guard.skipped, guard.rollbacks) == (3, 1)
    assert guard.check(3.7) is Verdict.OK and guard.consecutive == 0


def test_guard_state_round_trips():
    a = LossGuard(GuardSection())
    for loss in (5.0, 4.0, 3.0):
        a.check(loss)
    b = LossGuard(GuardSection())
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()


def test_guard_does_not_judge_spikes_before_enough_history():
    guard = LossGuard(GuardSection(min_history=5))
    assert guard.check(10.0) is Verdict.OK and guard.check(1000.0) is Verdict.OK
    assert guard.check(float("nan")) is Verdict.SKIP
