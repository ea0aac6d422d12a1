"""Ready-made pipeline configurations."""

from __future__ import annotations

import sysconfig
from pathlib import Path

from flopwise.data.config import PipelineConfig


def stdlib_demo_config(
    out_dir: str | Path,
    vocab_size: int = 8192,
    eval_fraction: float = 0.03,
    cache_dir: str | Path | None = None,
    workers: int = 0,
    dedup: bool = True,
) -> PipelineConfig:
    """The demo corpus: the running interpreter's standard-library *.py (site-packages excluded), normalised,
    code-filtered (auto-generated files dropped), deduplicated, a byte-level BPE of `vocab_size` trained on
    it, packed into `out_dir` with a held-out `eval` split. Pass to `run_pipeline`."""
    stdlib = sysconfig.get_paths()["stdlib"]
    stages: list[dict] = [
        {"type": "normalize"},
        {
            "type": "code_quality",
            "generated_markers": ["generated"],
            "marker_chars": 400,
            "max_line_length": 2000,
            "max_mean_line_length": 200.0,
        },
    ]
    if dedup:
        stages += [{"type": "exact_dedup"}, {"type": "near_dedup", "threshold": 0.9}]
    return PipelineConfig.from_dict(
        {
            "sources": [
                {
                    "type": "files",
                    "name": "stdlib",
                    "path": stdlib,
                    "glob": "**/*.py",
                    "exclude": ["site-packages", "dist-packages"],
                    "encoding_errors": "skip",
                    "files_per_unit": 128,
                }
            ],
            "stages": stages,
            "tokenizer": {"vocab_size": vocab_size},
            "output": {"dir": str(out_dir), "eval_fraction": eval_fraction},
            "run": {"cache_dir": str(cache_dir) if cache_dir else "", "workers": workers},
        }
    )
