"""Adds the `a2a_overlap` column to the MoE files written before it (sets 50 to 54): `true` where a row's notes say the
run overlapped its expert all-to-all with computation (Megatron's moe_a2a_overlap / overlap_moe_expert_parallel_comm
True), `false` where they say it did not, blank where they say nothing. Run once, before set 55 was committed (whose
rows were written with the column) and before any row was costed with the fact."""

import re

from csv_edit import add_columns

OVERLAP = re.compile(r"moe_a2a_overlap True|overlap_moe_expert_parallel_comm (?:and delay_wgrad_compute )?True"
                     r"|EP-comm overlap")
NO_OVERLAP = re.compile(r"moe_a2a_overlap False|overlap_moe_expert_parallel_comm False")


def fill(row: dict) -> None:
    if OVERLAP.search(row["notes"]) and NO_OVERLAP.search(row["notes"]):
        raise SystemExit(f"{row['source_id']}: the notes say both")
    row["a2a_overlap"] = "true" if OVERLAP.search(row["notes"]) else "false" if NO_OVERLAP.search(row["notes"]) else ""


if __name__ == "__main__":
    for name in ("fresh_holdout_50_moe.csv", "fresh_holdout_52_moe.csv", "fresh_holdout_53_moe.csv",
                 "fresh_holdout_54_moe.csv"):
        rows = add_columns(name, ["a2a_overlap"], fill)
        print(name, {v: sum(r["a2a_overlap"] == v for r in rows) for v in ("true", "false", "")})
