"""benchmarks/planner_moe_host_fit.py: the host time per MoE block is the grid value with the least median |error|,
and each run's cross-validated error comes from a value fitted without its own source."""

from flopwise.plan import experts
from tests.benchmark_module import load_benchmark


def _module():
    return load_benchmark("planner_moe_host_fit")


def test_the_fit_takes_the_least_median_and_cross_validates_by_source(monkeypatch):
    fit = _module()
    monkeypatch.setattr(fit, "GRID_S", [0.0, 1e-3, 2e-3])
    monkeypatch.setattr(fit, "FOLDS", 2)
    rows = [{"source_id": "a"}, {"source_id": "a"}, {"source_id": "b"}, {"source_id": "b"}]
    # source a is best at 1 ms, source b at 2 ms; a refused row (None) is in no median
    table = [[-0.5, -0.5, -0.9, None], [0.0, 0.1, -0.4, None], [0.5, 0.6, 0.0, None]]
    assert fit.best(table, [0, 1]) == 1 and fit.best(table, [2, 3]) == 2
    errors, fitted = fit.cross_validated(rows, table)
    assert sorted(fitted) == [1e-3, 2e-3]  # each fold fitted on the other source alone
    assert errors == [0.5, 0.6, -0.4, None]  # a's rows at b's value, b's at a's


def test_the_shipped_constant_is_what_the_fit_found():
    fit = _module()
    rows = fit.fit_rows()
    assert fit.GRID_S[fit.best(fit.error_table(rows), list(range(len(rows))))] == experts.MOE_BLOCK_HOST_S
