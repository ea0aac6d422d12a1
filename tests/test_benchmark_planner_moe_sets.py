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
        # than dp with etp left blank (= tp), TP wider than the KV heads (Megatron-Core divides them by TP too)
        assert all(reason.startswith(("attention_variant = ", "moe_every = ", "no layout can run: expert parallel degree",
                                      "no layout can run: tensor parallel degree")) for _, reason in refused), refused
    assert script.main([str(script.MOE / "fresh_holdout_52_moe.csv")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fresh_holdout_52_moe.csv: 36 rows, 0 refused") and "  all: 36 runs, median" in out


def test_rows_over_nodes_and_each_rows_group_line(monkeypatch, capsys):
    """An ep group over nodes is ep x etp (blank or 0: tp) above the GPUs per node; each costed row is held to the line
    its plan quotes: the first of its MoE groups (GPU and profile, GPU, all) with MIN_RUNS runs in the record."""
    script = _module()
    row = {"tp": "2", "etp": "", "ep": "8", "gpus_per_node": "8"}
    assert script.over_nodes(row) and script.over_nodes({**row, "etp": "0"}) and not script.over_nodes({**row, "etp": "1"})
    assert script.over_nodes({**row, "etp": "1", "ep": "16"}) and not script.over_nodes({**row, "gpus_per_node": "72"})
    path = script.MOE / "fresh_holdout_56_moe.csv"
    costed = script.score(path)[0][:2]  # two H800 rows of the `megatron-lm` profile
    enough, few = track_record.MIN_RUNS, track_record.MIN_RUNS - 1
    record = {"groups": {"moe|H800-SXM|megatron-lm": {"n": few, "p90": 9.0},  # too few runs: skipped
                         "moe|H800-SXM": {"n": enough, "p90": 0.5},
                         "moe": {"n": 100, "p90": 0.01}}}
    held = script.group_lines(costed, record)
    assert [(key, p90) for _, _, key, p90 in held] == [("moe|H800-SXM", 0.5)] * 2
    assert [e for _, e, _, _ in held] == [e for _, e in costed]
    profile = {**record["groups"], "moe|H800-SXM|megatron-lm": {"n": enough, "p90": 9.0}}
    assert {key for _, _, key, _ in script.group_lines(costed, {"groups": profile})} == {"moe|H800-SXM|megatron-lm"}
    assert script.group_lines(costed, {"groups": {}})[0][2:] == ("", None)
    # --lines: within when |error| <= the line, counted over the rows that have one
    errors = sorted(abs(e) for _, e in script.score(path)[0])
    pooled = {"n": 100, "p90": errors[4], "median": 0.1, "max": 1.0, "too_fast": 0, "signed_median": 0.0}
    line = {"groups": {"moe": pooled}}  # (the plans quote it too)
    monkeypatch.setattr(track_record, "load", lambda: line)
    assert script.main(["--lines", str(path)]) == 0
    assert f"  lines: 5 of {len(errors)} within their MoE group's line" in capsys.readouterr().out
