"""`flopwise data`: run the data pipeline from a TOML file; manage its cache."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flopwise.cli.common import NON_NEGATIVE_INT, console

app = typer.Typer(
    help="Turn raw corpora into training shards: clean, deduplicate, verify, tokenize, pack.",
    no_args_is_help=True,
)
cache_app = typer.Typer(help="List or remove cached pipeline outputs.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


def _fmt(n) -> str:
    if n is None:
        return "-"
    return f"{n:,}"


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def stage_table(result) -> Table:
    t = Table(title=f"data pipeline: {result.shard_dir}" + ("  (cached)" if result.cached else ""))
    for col in (
        "stage",
        "docs in",
        "docs out",
        "bytes in",
        "bytes out",
        "tokens out",
        "dropped (reason: count)",
    ):
        t.add_column(col, justify="left" if col.startswith(("stage", "dropped")) else "right")
    for row in result.stages:
        drops = ", ".join(
            f"{k}: {v:,}" for k, v in sorted(row.get("drops", {}).items(), key=lambda kv: -kv[1])
        )
        extra = row.get("extra") or {}
        if "clusters" in extra:
            drops += f" ({extra['clusters']:,} clusters)"
        if "replaced" in extra and extra["replaced"]:
            drops += " replaced " + ", ".join(f"{k}: {v:,}" for k, v in extra["replaced"].items())
        t.add_row(
            row["stage"],
            _fmt(row.get("docs_in")),
            _fmt(row.get("docs_out")),
            _fmt_bytes(row.get("bytes_in")),
            _fmt_bytes(row.get("bytes_out")),
            _fmt(row.get("tokens_out")),
            drops,
        )
    return t


@app.command("run")
def run(
    config: Path = typer.Argument(..., help="pipeline TOML file"),
    ray: str = typer.Option(None, "--ray", help="run on Ray Data: a cluster address, or 'auto' (local Ray)"),
    workers: int = typer.Option(
        None, "--workers", "-w", help="local worker processes (default and 0: one per core)",
        callback=NON_NEGATIVE_INT,
    ),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON instead of a table"),
    force: bool = typer.Option(False, "--force", help="recompute even if the cache holds this result"),
) -> None:
    """Run the pipeline in CONFIG (resumes an interrupted run; reuses a cached result)."""
    from flopwise.data.config import load_config
    from flopwise.data.pipeline import run_pipeline

    cfg = load_config(config)
    if as_json:
        result = run_pipeline(cfg, workers=workers, ray_address=ray, force=force)
        console.print_json(json.dumps(result.to_json()))
        return
    with Progress(
        TextColumn("{task.description:<40}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bars:
        tasks: dict[str, int] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bars.add_task(phase, total=total)
            bars.update(tasks[phase], completed=done, total=total)

        result = run_pipeline(cfg, workers=workers, ray_address=ray, progress=progress, force=force)
    if result.cached:
        console.print(f"[green]cache hit[/]: reusing {result.cache_dir} (key {result.key})")
    console.print(stage_table(result))
    splits = ", ".join(
        f"{k}: {v['documents']:,} docs, {v['tokens']:,} tokens" for k, v in result.splits.items()
    )
    console.print(f"shards: {result.shard_dir}  ({splits})  in {result.seconds:.1f} s")
    if result.dropped_dir is not None:
        console.print(f"dropped documents: {result.dropped_dir} (one JSON-lines file per stage, with the reason)")
    problems = result.source_problems
    if problems:
        console.print("input problems: " + ", ".join(f"{k}: {v:,}" for k, v in problems.items()))
        for ev in result.events[:10]:
            where = f"{ev['file']}" + (f":{ev['line']}" if ev.get("line") is not None else "")
            console.print(f"  {ev['kind']}: {where} {ev.get('detail', '')}", highlight=False)


def _cache_dir(cache_dir: Path | None) -> Path:
    from flopwise.data.config import RunConfig

    return cache_dir if cache_dir else RunConfig().resolved_cache_dir()


@cache_app.command("ls")
def cache_ls(
    cache_dir: Path = typer.Option(
        None, "--cache-dir", help="default: $FLOPWISE_CACHE/data or ~/.cache/flopwise/data"
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """List cached pipeline results."""
    from flopwise.data.pipeline import cache_entries

    entries = cache_entries(_cache_dir(cache_dir))
    if as_json:
        console.print_json(json.dumps(entries))
        return
    t = Table(title=f"data cache: {_cache_dir(cache_dir)}")
    for col in ("key", "complete", "size", "created", "sources"):
        t.add_column(col, no_wrap=col in ("key", "created"), overflow="fold")
    for e in entries:
        t.add_row(
            e["key"],
            "yes" if e["complete"] else "partial",
            _fmt_bytes(e["bytes"]),
            e["created"] or "-",
            ", ".join(e["sources"]),
        )
    console.print(t)


@cache_app.command("rm")
def cache_rm(
    keys: list[str] = typer.Argument(None, help="keys (or unique prefixes) to remove"),
    all_: bool = typer.Option(False, "--all", help="remove every entry"),
    all_matching: bool = typer.Option(
        False, "--all-matching", help="let a prefix that matches several keys remove them all"
    ),
    cache_dir: Path = typer.Option(
        None, "--cache-dir", help="default: $FLOPWISE_CACHE/data or ~/.cache/flopwise/data"
    ),
) -> None:
    """Remove cached pipeline results (a prefix must name one key, unless --all-matching)."""
    from flopwise.data.pipeline import cache_remove
    from flopwise.errors import ConfigError

    if not keys and not all_:
        raise ConfigError("cache rm: give one or more keys, or --all")
    removed = cache_remove(_cache_dir(cache_dir), None if all_ else keys, all_matching=all_matching)
    console.print(f"removed {len(removed)} cache entr{'y' if len(removed) == 1 else 'ies'}")
