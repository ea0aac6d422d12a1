"""lm-evaluation-harness's `local-completions` model runs a log-likelihood task, defined from a local JSONL
file, against the live server; its scores are the model's own."""

from __future__ import annotations

import json

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")


@pytest.mark.slow
def test_lm_eval_local_completions_scores_a_local_multiple_choice_task(server, served_lfa, llama_checkpoint,
                                                                       tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    from flopwise.serve.export import export_hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tokenizer_dir = export_hf(llama_checkpoint, tmp_path / "tok")  # the same tokenizer, as an HF folder
    docs = [
        {"context": "def add(a, b):\n    return", "choices": [" a + b", " None", " 42"], "label": 0},
        {"context": "import os\nimport", "choices": [" sys", " 123", " ???"], "label": 0},
        {"context": "for i in range(10):\n", "choices": ["    print(i)", "print(", "}}}"], "label": 0},
        {"context": "class Point:\n    def", "choices": [" __init__(self, x):", " ((", " end"], "label": 0},
    ]
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "toy.yaml").write_text(
        "task: flopwise_toy_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\n'
        'target_delimiter: ""\n'
        "metric_list:\n  - metric: acc\n"
    )
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={"model": "toy", "base_url": server.url + "/v1/completions", "tokenizer_backend": "huggingface",
                    "tokenizer": str(tokenizer_dir), "num_concurrent": 1, "max_retries": 1, "tokenized_requests": True},
        tasks=["flopwise_toy_mc"], task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        log_samples=True,
    )
    samples = results["samples"]["flopwise_toy_mc"]
    assert len(samples) == len(docs)
    tok = served_lfa.tokenizer
    for sample in samples:
        doc = sample["doc"]
        context = doc["context"].rstrip()  # lm-eval moves trailing whitespace into the continuation
        ctx = tok.encode(context).ids
        for choice, (got, _greedy) in zip(doc["choices"], (r[0] for r in sample["resps"]), strict=True):
            cont = tok.encode(doc["context"] + choice).ids[len(ctx):]
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = torch.log_softmax(served_lfa.model(ids)[0].float(), -1)
            want = sum(logp[len(ctx) + i - 1, t].item() for i, t in enumerate(cont))
            assert abs(float(got) - want) < 1e-3
    assert 0 <= results["results"]["flopwise_toy_mc"]["acc,none"] <= 1
