"""Adds the latent-attention columns (q_lora_rank, kv_lora_rank, rope_head_dim) to the MoE files written before them
(sets 50, 52, 53), from each latent-attention row's own notes, and sets such a row's head_dim to the unrotated query /
key dims per head (128 in every DeepSeek flavour), the column's meaning under attention_variant = mla. Run once, after
set 54 was committed and scored: its rows were written with the columns."""

import re

from csv_edit import add_columns

COLUMNS = ["q_lora_rank", "kv_lora_rank", "rope_head_dim"]


def fill(row: dict) -> None:
    for key in COLUMNS:
        row[key] = ""
    if row["attention_variant"] != "mla":
        return
    notes = row["notes"]
    q_lora = re.search(r"q_lora_rank (\d+)", notes)
    kv_lora = re.search(r"kv_lora_rank (\d+)", notes)
    if not (q_lora and kv_lora and re.search(r"rope(?:_head_dim| dim)? 64", notes)):
        raise SystemExit(f"{row['source_id']}: the notes do not state the latent dims")
    row.update(q_lora_rank=q_lora.group(1), kv_lora_rank=kv_lora.group(1), rope_head_dim="64", head_dim="128")


if __name__ == "__main__":
    for name in ("fresh_holdout_50_moe.csv", "fresh_holdout_52_moe.csv", "fresh_holdout_53_moe.csv"):
        rows = add_columns(name, COLUMNS, fill)
        print(name, sum(1 for r in rows if r["kv_lora_rank"]), "latent-attention rows")
