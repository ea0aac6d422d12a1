"""The edit that gave the MoE sets' sliding-window rows (GPT-OSS: set 50's 22, set 52's 4) their `window` and
`global_every` columns, run once on 2026-12-06 before any of them was costed (README: "The GPT-OSS rows: the test
declared before they are costed"): every such row's notes state a 128-token window on every other block, the first
windowed (Megatron's window_attn_skip_freq 2; torchtitan's even-indexed layers), so window 128, global_every 2; every
other row gets blanks. No planner code is imported; it refuses to run on a converted file."""

import csv
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
for name in ("fresh_holdout_50_moe.csv", "fresh_holdout_52_moe.csv"):
    path = os.path.join(HERE, name)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    fields = list(rows[0])
    if "window" in fields:
        raise SystemExit(f"{path}: already has the window columns (this edit ran once, before the rows were costed)")
    for row in rows:
        windowed = row["attention_variant"] == "sliding-window"
        if windowed:  # the notes' own words, checked before the cells are written
            text = row["notes"]
            assert re.search(r"128-token sliding window on every other layer|sliding-window attention \(window 128\) "
                             r"on the even-indexed layers", text), row["source_id"]
        row.update(window="128" if windowed else "", global_every="2" if windowed else "")
    with open(path + ".tmp", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields + ["window", "global_every"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(path + ".tmp", path)
    print(name, sum(r["window"] == "128" for r in rows), "sliding-window rows of", len(rows))
