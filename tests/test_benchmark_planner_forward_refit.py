"""benchmarks/planner_forward_refit.py: the blind sets are chained in the order they were gathered, so each one is
predicted with constants fitted only on the files before it."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # the script imports planner_accuracy and planner_fit beside it
    try:
        spec = importlib.util.spec_from_file_location("planner_forward_refit",
                                                      ROOT / "benchmarks" / "planner_forward_refit.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_sets_are_chained_in_the_order_they_were_gathered():
    mod = _module()
    paths = mod.chain()
    assert [mod.set_number(p) for p in paths] == list(range(1, len(paths) + 1))  # set 10 after 9, not after 1
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
