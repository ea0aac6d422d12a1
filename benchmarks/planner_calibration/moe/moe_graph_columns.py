"""The edit that gave the MoE sets' rows (sets 50 and 52) the `cuda_graphs` and `dispatcher` facts their notes state,
run once on 2026-12-06, after they were scored and before the MoE host-time candidate was fitted on them (README:
"Fifty-third fresh holdout: the test declared before the set exists"). cuda_graphs: `full` where the recipe captures
the whole step (Megatron-Bridge's cuda_graph_impl full_iteration), `partial` where it captures parts of it
(cuda_graph_impl transformer_engine with a scope, NeMo's cuda_graphs 1 on a router / attention scope), else blank (not
stated); dispatcher: `hybridep`, `deepep`, `alltoall` where named, else blank. No planner code is imported; it refuses
to run on a converted file."""

import re

from csv_edit import add_columns


def graphs(text: str) -> str:
    if "full_iteration" in text:
        return "full"
    if re.search(r"cuda_graph_impl transformer_engine|cuda_graph_scope \[|cuda_graphs 1\b", text):
        return "partial"
    return ""


def dispatcher(text: str) -> str:
    text = text.lower()
    if re.search(r"hybridep|hybrid_ep|hybrid-ep", text):
        return "hybridep"
    if "deepep" in text and not re.search(r"without deepep|no deepep|deepep off|baseline", text):
        return "deepep"
    if re.search(r"dispatcher[ _a-z]*alltoall|alltoall dispatcher|moe_token_dispatcher_type[ =:']*alltoall|"
                 r"default all-to-all", text):
        return "alltoall"
    return ""


for name in ("fresh_holdout_50_moe.csv", "fresh_holdout_52_moe.csv"):
    rows = add_columns(name, ["cuda_graphs", "dispatcher"],
                       lambda row: row.update(cuda_graphs=graphs(row["notes"]), dispatcher=dispatcher(row["notes"])))
    print(name, {k: sum(r["cuda_graphs"] == k for r in rows) for k in ("full", "partial", "")},
          {k: sum(r["dispatcher"] == k for r in rows) for k in ("hybridep", "deepep", "alltoall", "")})
