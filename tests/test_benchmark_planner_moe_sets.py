"""benchmarks/planner_moe_sets.py: the MoE sets scored as the track record's MoE groups keep them, every row costed
or refused for a fact the planner names."""

from flopwise.plan import track_record
from tests.benchmark_module import load_benchmark


def _module():
    return load_benchmark("planner_moe_sets")


def test_each_moe_set_is_scored_as_the_record_keeps_it(capsys):
    script = _module()
    record = track_record.load()
    for path in sorted(script.MOE.glob("*.csv")):
        costed, refused = script.score(path)
        assert len(costed) == record["rows"][f"moe/{path.name}"]  # the runs the MoE groups hold
        # each refusal names what the planner does not cost: a variant, expert TP other than tp, interleaved MoE
        # blocks, the FP8 gather of grouped experts, expert groups wider than dp (etp 1 under tp > 1)
        assert all(reason.startswith(("attention_variant = ", "etp = ", "moe_every = ", "fp8_all_gather is costed",
                                      "no layout can run: expert parallel degree")) for _, reason in refused), refused
    assert script.main([str(script.MOE / "fresh_holdout_52_moe.csv")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fresh_holdout_52_moe.csv: 36 rows, 5 refused") and "  all: 31 runs, median" in out
