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
    paths = sorted((ROOT / "benchmarks" / "planner_calibration").glob("fresh_holdout*.csv"), key=mod.set_number)
    assert [mod.set_number(p) for p in paths] == list(range(1, len(paths) + 1))  # set 10 after 9, not after 1
    assert paths[0].name == "fresh_holdout.csv"
    for name in ("fit.csv", "holdout.csv", "fresh_holdout_x.csv"):
        with pytest.raises(ValueError, match="not a fresh holdout"):
            mod.set_number(Path(name))
