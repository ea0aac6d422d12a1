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
        # each refusal names what the planner does not cost: a variant, interleaved MoE blocks, expert groups wider
        # than dp with etp left blank (= tp), TP wider than the KV heads (Megatron replicates them; not modelled)
        assert all(reason.startswith(("attention_variant = ", "moe_every = ", "no layout can run: expert parallel degree",
                                      "no layout can run: tensor parallel degree")) for _, reason in refused), refused
    assert script.main([str(script.MOE / "fresh_holdout_52_moe.csv")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fresh_holdout_52_moe.csv: 36 rows, 0 refused") and "  all: 36 runs, median" in out
