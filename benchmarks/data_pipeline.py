"""Documents/s per core: flopwise's data pipeline against datatrove's equivalent, side by side.

Pipeline in both: read JSONL -> ftfy normalisation -> Gopher repetition + quality filters -> MinHash
near-dedup -> tokenise with the same tokenizer.json (trained beforehand, not timed) into token shards.
Corpora: the running interpreter's standard library (*.py as JSONL; the Gopher *quality* filter is
skipped there, being for prose) and a generated prose corpus of --gen-mb megabytes (Zipf words, some
non-ASCII and mojibake, 4% exact and 4% near duplicates, 3% repetitive junk).

Both run with the same number of worker processes (--workers, default 1) on the same machine, one after
the other; we report wall time, CPU time (self + children) and documents in per CPU-second and per
worker-second. datatrove is installed only for this benchmark (pip install -e '.[bench]').

    PYTHONPATH=src python benchmarks/data_pipeline.py --gen-mb 1000 --workers 2 --out /tmp/fwbench1g
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np


def cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def stdlib_jsonl(path: Path) -> int:
    root = Path(sysconfig.get_paths()["stdlib"])
    n = 0
    with open(path, "w") as out:
        for p in sorted(root.rglob("*.py")):
            if "site-packages" in p.parts or "dist-packages" in p.parts:
                continue
            try:
                text = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if text.strip():
                out.write(json.dumps({"id": str(p.relative_to(root)), "text": text}) + "\n")
                n += 1
    return n


def generated_jsonl(path: Path, megabytes: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    pyr = random.Random(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    vocab = ["".join(rng.choice(letters, size=int(k))) for k in rng.integers(2, 10, size=20000)]
    vocab = ["the", "of", "and", "to", "in", "that", "have", "with", "be", "is", "for", "was"] + vocab
    extras = ["café", "naïve", "über", "déjà", "cafÃ©", "donâ€™t", "coöperate", "résumé"]
    vocab = np.array(vocab)
    target = megabytes * 1_000_000
    written = n = 0
    recent: list[str] = []
    with open(path, "w") as out:
        while written < target:
            r = pyr.random()
            if r < 0.04 and recent:
                text = pyr.choice(recent)  # exact duplicate
            elif r < 0.08 and recent:
                words = pyr.choice(recent).split(" ")
                for _ in range(max(1, len(words) // 100)):
                    words[pyr.randrange(len(words))] = "zzz"
                text = " ".join(words)  # near duplicate
            elif r < 0.11:
                text = "\n".join(["buy now limited offer click here"] * pyr.randint(20, 80))  # junk
            else:
                nwords = int(rng.integers(300, 1500))
                ids = np.minimum(rng.zipf(1.3, size=nwords) - 1, len(vocab) - 1)
                words = vocab[ids].tolist()
                if pyr.random() < 0.15:
                    for _ in range(3):
                        words[pyr.randrange(nwords)] = pyr.choice(extras)
                sents, i = [], 0
                while i < nwords:
                    k = pyr.randint(8, 20)
                    sents.append(" ".join(words[i : i + k]).capitalize() + ".")
                    i += k
                paras = [" ".join(sents[j : j + 5]) for j in range(0, len(sents), 5)]
                text = "\n\n".join(paras)
                recent.append(text)
                if len(recent) > 200:
                    recent.pop(0)
            line = json.dumps({"id": f"g{n}", "text": text}, ensure_ascii=False) + "\n"
            out.write(line)
            written += len(line.encode())
            n += 1
    return n


def train_tokenizer(jsonl: Path, out: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def texts():
        budget = 50_000_000
        with open(jsonl) as fh:
            for line in fh:
                t = json.loads(line)["text"]
                budget -= len(t)
                yield t
                if budget < 0:
                    return

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts(), trainer=trainer)
    tok.save(str(out))


def run_flopwise(jsonl: Path, tok: Path, work: Path, workers: int, prose: bool) -> dict:
    from flopwise.data.config import PipelineConfig
    from flopwise.data.pipeline import run_pipeline

    stages = [{"type": "normalize"}, {"type": "gopher_repetition"}]
    if prose:
        stages.append({"type": "gopher_quality"})
    stages.append({"type": "near_dedup", "threshold": 0.72, "num_perm": 112, "ngram": 5})
    cfg = PipelineConfig.from_dict(
        {
            "sources": [{"type": "jsonl", "path": str(jsonl), "id_field": "id", "unit_bytes": 16 << 20}],
            "stages": stages,
            "tokenizer": {"path": str(tok)},
            "output": {"eval_fraction": 0.0},
            "run": {"cache_dir": str(work / "cache"), "workers": workers},
        }
    )
    c0, t0 = cpu_seconds(), time.perf_counter()
    r = run_pipeline(cfg, workers=workers, force=True)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    rows = {row["stage"]: row for row in r.stages}
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "docs_in": rows["read"]["docs_out"],
        "docs_out": rows["tokenize"]["docs_out"],
        "tokens_out": rows["tokenize"]["tokens_out"],
        "drops": {k: v["drops"] for k, v in rows.items() if v.get("drops")},
    }


def run_datatrove(jsonl: Path, tok: Path, work: Path, workers: int, prose: bool) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.formatters import FTFYFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers import JsonlWriter

    if work.exists():
        shutil.rmtree(work)
    # split the input so datatrove gets as many tasks as there are flopwise units
    src = work / "in"
    src.mkdir(parents=True)
    size, part, out = 0, 0, open(src / "00000.jsonl", "w")
    with open(jsonl) as fh:
        for line in fh:
            if size > 16 << 20:
                out.close()
                part += 1
                size, out = 0, open(src / f"{part:05d}.jsonl", "w")
            out.write(line)
            size += len(line)
    out.close()
    tasks = part + 1
    mh = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    filters = [GopherRepetitionFilter()] + ([GopherQualityFilter()] if prose else [])
    logs = str(work / "logs")
    # fork, not datatrove's default forkserver: forkserver workers are not our children, so their CPU
    # time would be missing from RUSAGE_CHILDREN and docs per CPU-second would read far too high
    common = {"workers": workers, "logging_dir": None, "skip_completed": False, "start_method": "fork"}
    stages = [
        (
            [
                JsonlReader(str(src), text_key="text", id_key="id"),
                FTFYFormatter(),
                *filters,
                JsonlWriter(str(work / "filtered"), compression=None),
            ],
            tasks,
        ),
        (
            [
                JsonlReader(str(work / "filtered"), compression=None),
                MinhashDedupSignature(str(work / "sigs"), config=mh),
            ],
            tasks,
        ),
        ([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=mh)], mh.num_buckets),
        ([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=mh)], 1),
        (
            [
                JsonlReader(str(work / "filtered"), compression=None),
                MinhashDedupFilter(str(work / "remove")),
                DocumentTokenizer(
                    str(work / "tokens"),
                    tokenizer_name_or_path=str(tok),
                    eos_token="<|endoftext|>",
                    shuffle_documents=False,
                ),
            ],
            tasks,
        ),
    ]
    c0, t0 = cpu_seconds(), time.perf_counter()
    for i, (pipeline, n) in enumerate(stages):
        ex = LocalPipelineExecutor(
            pipeline=pipeline, tasks=n, **{**common, "logging_dir": f"{logs}/{i}", "workers": min(workers, n)}
        )
        ex.run()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    docs_in = sum(1 for p in src.glob("*.jsonl") for _ in open(p))
    docs_out = 0
    tokens_out = 0
    for idx in (work / "tokens").rglob("*.ds.index"):
        docs_out += idx.stat().st_size // 8
    for ds in (work / "tokens").rglob("*.ds"):
        tokens_out += ds.stat().st_size // 2
    return {"wall_s": wall, "cpu_s": cpu, "docs_in": docs_in, "docs_out": docs_out, "tokens_out": tokens_out}


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/flopwise-bench")
    ap.add_argument("--gen-mb", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--only", choices=["stdlib", "generated"], default=None)
    ap.add_argument("--systems", default="flopwise,datatrove", help="comma-separated: flopwise, datatrove")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.getLogger("datatrove").setLevel(logging.WARNING)
    try:
        from loguru import logger

        logger.remove()
        logger.add(sys.stderr, level="WARNING")
    except ImportError:
        pass
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    corpora = []
    if args.only in (None, "stdlib"):
        corpora.append(("stdlib", False))
    if args.only in (None, "generated"):
        corpora.append((f"generated-{args.gen_mb}MB", True))
    for name, prose in corpora:
        jsonl = out / f"{name}.jsonl"
        if not jsonl.exists():
            t = time.perf_counter()
            n = stdlib_jsonl(jsonl) if name == "stdlib" else generated_jsonl(jsonl, args.gen_mb)
            print(
                f"[{name}] wrote {n} documents, {jsonl.stat().st_size / 1e6:.1f} MB "
                f"in {time.perf_counter() - t:.0f} s",
                flush=True,
            )
        tok = out / f"{name}.tokenizer.json"
        if not tok.exists():
            train_tokenizer(jsonl, tok, args.vocab)
        row = {"input_mb": round(jsonl.stat().st_size / 1e6, 1)}
        systems = [(n, f) for n, f in (("flopwise", run_flopwise), ("datatrove", run_datatrove)) if n in args.systems]
        for system, fn in systems:
            r = fn(jsonl, tok, out / f"work-{system}-{name}", args.workers, prose)
            r["docs_per_cpu_s"] = r["docs_in"] / r["cpu_s"]
            r["docs_per_worker_s"] = r["docs_in"] / (r["wall_s"] * args.workers)
            row[system] = r
            print(
                f"[{name}] {system}: "
                + json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}),
                flush=True,
            )
        if "flopwise" in row and "datatrove" in row:
            row["ratio_cpu"] = row["flopwise"]["docs_per_cpu_s"] / row["datatrove"]["docs_per_cpu_s"]
            row["ratio_wall"] = row["flopwise"]["docs_per_worker_s"] / row["datatrove"]["docs_per_worker_s"]
            print(
                f"[{name}] flopwise / datatrove docs/s per core: {row['ratio_cpu']:.2f}x (CPU), "
                f"{row['ratio_wall']:.2f}x (wall)",
                flush=True,
            )
        results[name] = row
    import flopwise

    meta = {
        "python": platform.python_version(),
        "flopwise": flopwise.__version__,
        "datatrove": _version("datatrove"),
        "cpu": platform.processor() or platform.machine(),
        "workers": args.workers,
    }
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
