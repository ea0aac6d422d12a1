"""The edit that gave the MoE sets' sliding-window rows (GPT-OSS: set 50's 22, set 52's 4) their `window` and
`global_every` columns, run once on 2026-12-06 before any of them was costed (README: "The GPT-OSS rows: the test
declared before they are costed"): every such row's notes state a 128-token window on every other block, the first
windowed (Megatron's window_attn_skip_freq 2; torchtitan's even-indexed layers), so window 128, global_every 2; every
other row gets blanks. No planner code is imported; it refuses to run on a converted file."""

import re

from csv_edit import add_columns


def fill(row: dict) -> None:
    windowed = row["attention_variant"] == "sliding-window"
    if windowed:  # the notes' own words, checked before the cells are written
        assert re.search(r"128-token sliding window on every other layer|sliding-window attention \(window 128\) "
                         r"on the even-indexed layers", row["notes"]), row["source_id"]
    row.update(window="128" if windowed else "", global_every="2" if windowed else "")


for name in ("fresh_holdout_50_moe.csv", "fresh_holdout_52_moe.csv"):
    rows = add_columns(name, ["window", "global_every"], fill)
    print(name, sum(r["window"] == "128" for r in rows), "sliding-window rows of", len(rows))
