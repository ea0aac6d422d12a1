"""benchmarks/planner_forward_refit.py: the blind sets are chained in the order they were gathered, so each one is
predicted with constants fitted only on the files before it."""

from pathlib import Path

import pytest

from tests.benchmark_module import load_benchmark


def _module():
    return load_benchmark("planner_forward_refit")


def test_sets_are_chained_in_the_order_they_were_gathered():
    mod = _module()
    paths = mod.chain()
    numbers = [mod.set_number(p) for p in paths]
    assert numbers == sorted(numbers)  # set 10 after 9, not after 1
    # every set gathered has its file but the fortieth and the forty-fourth, which came back empty
    # (planner_calibration/README.md)
    assert set(range(1, numbers[-1] + 1)) - set(numbers) == {40, 44}
    assert paths[0].name == "fresh_holdout.csv"
    for name in ("fit.csv", "holdout.csv", "fresh_holdout_x.csv"):
        with pytest.raises(ValueError, match="not a fresh holdout"):
            mod.set_number(Path(name))


def test_each_set_is_predicted_with_constants_fitted_only_on_the_rows_before_it():
    """A fit that records what it saw: set j's constants come from the first pool and sets 1..j-1, never set j."""
    mod = _module()
    first = ["fit-1", "fit-2"]
    sets = [(Path("fresh_holdout.csv"), ["a-1", "a-2"]), (Path("fresh_holdout_2.csv"), ["b-1"]),
            (Path("fresh_holdout_3.csv"), ["c-1", "c-2", "c-3"])]
    chained = mod.forward(first, sets, lambda pool: {"seen": tuple(pool)})
    assert [(path.name, params["seen"]) for path, _, params in chained] == [
        ("fresh_holdout.csv", ("fit-1", "fit-2")),
        ("fresh_holdout_2.csv", ("fit-1", "fit-2", "a-1", "a-2")),
        ("fresh_holdout_3.csv", ("fit-1", "fit-2", "a-1", "a-2", "b-1")),
    ]
    assert [rows for _, rows, _ in chained] == [rows for _, rows in sets]
    assert first == ["fit-1", "fit-2"]  # the caller's pool is left as it was


class _Obs:
    """What the script reads of an observation: its profile and its plan's step time."""

    def __init__(self, software: str, planned: float):
        self.training = type("T", (), {"software": software})()
        self.planned = planned

    def predict(self, params):
        return self.planned


def test_a_profile_lean_is_its_median_shrunk_by_how_few_runs_it_has():
    mod = _module()
    # 20 te runs all twice as slow as planned (log 2 each), 5 torch-eager runs exactly as planned, one deepspeed run
    pool = ([{"_obs": _Obs("te", 1.0), "measured_step_s": "2.0"}] * 20
            + [{"_obs": _Obs("torch-eager", 3.0), "measured_step_s": "3.0"}] * 5
            + [{"_obs": _Obs("deepspeed", 1.0), "measured_step_s": "1.5"}])
    leans = mod.profile_leans(pool, {})
    assert leans["te"] == pytest.approx(2.0 ** (20 / 40))  # n = k: half the median's log
    assert leans["torch-eager"] == pytest.approx(1.0)
    assert leans["deepspeed"] == pytest.approx(1.5 ** (1 / 21))
    row = {"_obs": _Obs("te", 1.0), "measured_step_s": "2.0"}
    other = {"_obs": _Obs("megatron-lm", 1.0), "measured_step_s": "2.0"}  # a profile with no runs: no lean
    assert mod.errors([row, other], {}, leans) == pytest.approx([2.0 ** 0.5 / 2 - 1, -0.5])
