"""The scheduler's cache of planner speeds answers only for the planner that wrote it."""

import dataclasses
import json

from flopwise.cluster.speed import PlannerSpeeds, model_config
from flopwise.hardware import CATALOGUE
from flopwise.plan import spec


def test_a_cached_speed_is_reused_until_the_planners_profile_changes(tmp_path, monkeypatch):
    path = tmp_path / "speeds.json"
    model, acc = model_config("tiny"), CATALOGUE["A100-80GB"]
    first = PlannerSpeeds(path)
    fresh = first.speed(model, acc, 8, 8, 64)
    assert fresh.tokens_per_s > 0
    first.save()
    raw = json.loads(path.read_text())
    (key,) = raw
    raw[key]["tokens_per_s"] = 123.0  # mark the cached entry: a hit returns it
    path.write_text(json.dumps(raw))
    assert PlannerSpeeds(path).speed(model, acc, 8, 8, 64).tokens_per_s == 123.0
    # the flopwise profile changes (as it did when its kernels were measured): the old entry no longer answers
    changed = dataclasses.replace(spec.SOFTWARE["flopwise"], elementwise_traffic=9.0)
    monkeypatch.setitem(spec.SOFTWARE, "flopwise", changed)
    spec._profile.cache_clear()
    try:
        again = PlannerSpeeds(path).speed(model, acc, 8, 8, 64)
    finally:
        monkeypatch.undo()
        spec._profile.cache_clear()
    assert again.tokens_per_s not in (123.0, 0.0)
