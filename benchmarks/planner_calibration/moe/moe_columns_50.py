"""The edit that gave set 50's MoE rows (moe/fresh_holdout_50_moe.csv) their MoE columns, run once on 2026-12-06 before
they were costed (README: "Fiftieth set's mixture-of-experts rows"): each model's experts, top-k, one expert's width,
head dim, shared experts, leading dense layers and attention from the config its rows' notes cite, each row's EP and
expert TP from its own notes; the helper's dense-equivalent ffn (top-k x expert width + shared) is checked, then
replaced. No planner code is imported. Kept as the record of the edit: it refuses to run on the converted file."""
import re

from csv_edit import add_columns

NEW = ["experts", "top_k", "ep", "etp", "head_dim", "router", "shared_ffn", "dense_layers", "dense_ffn", "moe_every",
       "attention_variant"]
CONF = {  # experts, top_k, one expert's ffn, head_dim, shared_ffn, dense_layers, dense_ffn, attention_variant
    "Mixtral-8x7B": (8, 2, 14336, "", 0, 0, "", "full"),
    "Llama-4-Scout-17B-16E (LLM part)": (16, 1, 8192, "", 8192, 0, "", "full"),  # chunk 8192 = seq: plain causal
    "DeepSeek-V3": (256, 8, 2048, "", 2048, 3, 18432, "mla"),
    "GPT-OSS-120B": (128, 4, 2880, 64, 0, 0, "", "sliding-window"),
    "Qwen3-30B-A3B": (128, 8, 768, 128, 0, 0, "", "full"),
    "Qwen3-235B-A22B": (128, 8, 1536, 128, 0, 0, "", "full"),
}

def fill(r: dict) -> None:
    e, k, ffn, hd, shared, dense, dffn, var = CONF[r["model"]]
    n = r["notes"]
    ep = re.findall(r"\bEP (\d+) \(expert parallel size, printed\)", n) or re.findall(r"\bEP (\d+)", n)[:1]
    etp = re.findall(r"\bETP (\d+)|expert_tensor_parallel_size (\d+)|Expert tensor parallel size (\d+)", n)
    etp = sorted({x for t in etp for x in t if x})
    assert ep, (r["source_id"], r["model"])
    assert len(set(ep)) == 1, (r["source_id"], ep)
    assert len(set(etp)) <= 1, (r["source_id"], etp)
    assert int(r["ffn"]) == k * ffn + shared, (r["model"], r["ffn"])  # the helper's dense-equivalent width
    r.update(ffn=str(ffn), experts=str(e), top_k=str(k), ep=ep[0], etp=etp[0] if etp else "", head_dim=str(hd),
             router="", shared_ffn=str(shared), dense_layers=str(dense), dense_ffn=str(dffn), moe_every="1",
             attention_variant=var)


print(len(add_columns("fresh_holdout_50_moe.csv", NEW, fill)), "rows converted")
