import json
import os

import pytest

from flopwise.data.config import PipelineConfig
from flopwise.data.sources import SourceReport, plan_units, read_unit
from flopwise.errors import ConfigError, DataError


def _cfg(tmp_path, source: dict, **run):
    return PipelineConfig.from_dict({"sources": [source], "run": run}, base_dir=tmp_path)


def _read_all(cfg):
    report = SourceReport()
    docs = [d for u in plan_units(cfg) for d in read_unit(cfg, u, report)]
    return docs, report


def test_jsonl_bad_input_is_counted_with_file_and_line(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_bytes(
        b'{"text": "good one"}\n'
        b"{broken\n"
        b'{"text": "bad \xff byte"}\n'
        b'["not", "an", "object"]\n'
        b'{"other": 1}\n'
        b"\n"
        b'{"text": "' + b"y" * 5000 + b'"}\n'
        b'{"text": "last"}'
    )
    (tmp_path / "empty.jsonl").write_text("")
    cfg = _cfg(tmp_path, {"type": "jsonl", "path": ".", "glob": "*.jsonl"}, max_doc_bytes=1000)
    docs, report = _read_all(cfg)
    assert [d["text"] for d in docs] == ["good one", "bad \ufffd byte", "last"]
    assert dict(report.problems) == {
        "malformed": 2,
        "non_utf8": 1,
        "missing_text": 1,
        "too_large": 1,
        "empty": 1,
    }
    where = {(e["kind"], os.path.basename(e["file"]), e["line"]) for e in report.events}
    assert ("malformed", "x.jsonl", 2) in where
    assert ("non_utf8", "x.jsonl", 3) in where
    assert ("too_large", "x.jsonl", 7) in where
    assert ("empty", "empty.jsonl", None) in where


def test_oversized_line_is_streamed_past_not_loaded(tmp_path):
    import tracemalloc

    f = tmp_path / "big.jsonl"
    with open(f, "w") as fh:
        fh.write('{"text": "' + "z" * (16 << 20) + '"}\n{"text": "after"}\n')
    cfg = _cfg(tmp_path, {"type": "jsonl", "path": "big.jsonl"}, max_doc_bytes=4096)
    tracemalloc.start()
    try:
        docs, report = _read_all(cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [d["text"] for d in docs] == ["after"]
    assert report.problems["too_large"] == 1
    assert peak < 4 << 20  # a 16 MB line was skipped in bounded chunks, never held whole


def test_jsonl_byte_range_units_partition_exactly(tmp_path):
    lines = [json.dumps({"text": f"document number {i} " + "w" * (i % 37)}) for i in range(500)]
    (tmp_path / "x.jsonl").write_text("\n".join(lines) + "\n")
    whole = _read_all(_cfg(tmp_path, {"type": "jsonl", "path": "x.jsonl"}))[0]
    cfg = _cfg(tmp_path, {"type": "jsonl", "path": "x.jsonl", "unit_bytes": 997})
    assert len(plan_units(cfg)) > 10
    parts = _read_all(cfg)[0]
    assert [d["text"] for d in parts] == [d["text"] for d in whole]
    assert len({d["id"] for d in parts}) == 500


def test_files_source_skips_unreadable_and_oversized(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    (d / "a.py").write_text("print('a')\n")
    (d / "b.py").write_bytes(b"x = '\xfe'\n")
    (d / "big.py").write_text("#" * 5000)
    (d / "empty.py").write_text("")
    os.symlink(d / "missing.py", d / "broken.py")
    os.mkfifo(d / "fifo.py")
    (d / "site-packages").mkdir()
    (d / "site-packages" / "c.py").write_text("c = 1\n")
    cfg = _cfg(
        tmp_path,
        {
            "type": "files",
            "path": "src",
            "glob": "**/*.py",
            "exclude": ["site-packages"],
            "encoding_errors": "skip",
        },
        max_doc_bytes=1000,
    )
    docs, report = _read_all(cfg)
    assert [d["id"] for d in docs] == ["s0:a.py"]
    assert dict(report.problems) == {
        "unreadable": 1,
        "non_utf8": 1,
        "too_large": 1,
        "empty": 1,
        "not_a_regular_file": 1,
    }


def test_parquet_and_hf_disk_sources(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"content": [f"row {i}" for i in range(50)], "code": ["x = 1"] * 50})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=20)
    cfg = _cfg(
        tmp_path, {"type": "parquet", "path": "t.parquet", "text_field": "content", "fields": ["code"]}
    )
    assert len(plan_units(cfg)) == 3
    docs, _ = _read_all(cfg)
    assert [d["text"] for d in docs] == [f"row {i}" for i in range(50)]
    assert docs[0]["code"] == "x = 1"

    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": [f"hf {i}" for i in range(30)]}).save_to_disk(str(tmp_path / "hf"))
    cfg = _cfg(tmp_path, {"type": "hf_disk", "path": "hf", "rows_per_unit": 7})
    assert len(plan_units(cfg)) == 5
    docs, _ = _read_all(cfg)
    assert [d["text"] for d in docs] == [f"hf {i}" for i in range(30)]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="sources\\[0\\].type = 'csv'"):
        _cfg(tmp_path, {"type": "csv", "path": "x"})
    with pytest.raises(ConfigError, match="unknown key sources\\[0\\].colour"):
        _cfg(tmp_path, {"type": "jsonl", "path": "x", "colour": 1})
    with pytest.raises(ConfigError, match="stages\\[0\\].threshold"):
        PipelineConfig.from_dict(
            {
                "sources": [{"type": "jsonl", "path": "x"}],
                "stages": [{"type": "near_dedup", "threshold": "high"}],
            }
        )
    with pytest.raises(ConfigError, match="unknown key stages\\[0\\].bogus"):
        PipelineConfig.from_dict(
            {"sources": [{"type": "jsonl", "path": "x"}], "stages": [{"type": "pii", "bogus": 1}]}
        )
    with pytest.raises(DataError, match="no input matches"):
        plan_units(_cfg(tmp_path, {"type": "jsonl", "path": "nothing/*.jsonl"}))


def test_lone_surrogates_in_json_or_file_names_are_kept_apart_not_a_crash(tmp_path):
    from flopwise.data.pipeline import run_pipeline

    (tmp_path / "c.jsonl").write_text(
        '{"id": "a", "text": "broken \\ud800 escape in a document"}\n'
        '{"id": "b\\udc00", "text": "a fine document with an odd id"}\n'
    )
    cfg = PipelineConfig.from_dict(
        {
            "sources": [{"type": "jsonl", "path": "c.jsonl", "id_field": "id"}],
            "tokenizer": {"vocab_size": 300},
            "output": {"eval_fraction": 0.0},
            "run": {"cache_dir": str(tmp_path / "cache"), "workers": 1},
        },
        base_dir=tmp_path,
    )
    docs, report = _read_all(cfg)
    assert [d["text"] for d in docs] == ["broken \ufffd escape in a document", "a fine document with an odd id"]
    assert docs[1]["id"] == "s0:b\udc00" and dict(report.problems) == {"non_utf8": 1}
    r = run_pipeline(cfg)
    assert r.splits["train"]["documents"] == 2 and r.source_problems == {"non_utf8": 1}
