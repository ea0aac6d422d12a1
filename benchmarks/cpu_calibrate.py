"""Calibrating a CPU past its start-up timings: why a CPU's fitted efficiencies may exceed 1.

A measured CPU's figures are start-up timings of one shape each: the peak and gemm_efficiency of a 1024-square fp32
GEMM, the memory bandwidth of a 64 MiB copy. Three parts, one thread (as the closed-loop test runs):

- `gemms`: the square GEMM against the narrower GEMMs of a CPU-sized block (1024 tokens, width 256);
- `profile`: one training step of that model (2 blocks, width 256, 128 tokens, 8 sequences) by kind (torch.profiler's
  self CPU time: matmuls, fused attention, the rest) beside the planner's parts for the same micro-batch;
- `loop`: the closed loop of tests/plan/test_calibrate.py, repeated: three layouts trained in this process (the fastest
  of three rounds each), gemm_efficiency fitted on two, the error on the third, once with the efficiency capped at 1
  (as before 2026-12-05) and once with a measured device's ceiling (hardware.MEASURED_EFFICIENCY_CEILING).

    .venv/bin/python benchmarks/cpu_calibrate.py [--repeats 4] [--parts gemms,profile,loop]
"""

from __future__ import annotations

import argparse
import collections
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.planner_kernels import kernel_kind  # noqa: E402
from flopwise import hardware  # noqa: E402
from tests.plan.test_calibrate import SHAPE, fastest_of_rounds  # noqa: E402 - the closed-loop test's runs

WIDTH, TOKENS = 256, 1024


def gemms() -> None:
    print("| GEMM (m x k x n), fp32, 1 thread | best GFLOP/s | median GFLOP/s | median / square's best |")
    print("|---|---|---|---|")
    square = None
    for m, k, n in ((1024, 1024, 1024), (TOKENS, WIDTH, 3 * WIDTH), (TOKENS, 3 * WIDTH, WIDTH),
                    (TOKENS, WIDTH, 2048), (TOKENS, WIDTH, WIDTH)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        rates = hardware._timed_rates(lambda a=a, b=b: torch.mm(a, b), 2.0 * m * k * n, 0.5)
        best, median = max(rates), statistics.median(rates)
        square = square or best
        print(f"| {m} x {k} x {n} | {best / 1e9:.1f} | {median / 1e9:.1f} | {median / square:.2f} |")
    acc = hardware.cpu_accelerator()
    print(f"\nstart-up timing in this process: peak {acc.peak_flops / 1e9:.1f} GFLOP/s, gemm_efficiency "
          f"{acc.gemm_efficiency:.3f}, copy {acc.memory_bandwidth / 1e9:.1f} GB/s\n")


def _model_config():
    from flopwise.train.config import load_config

    return load_config(None, SHAPE, preset="tiny").model_config()


def profile(micro_batch: int = 8) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from flopwise.models.transformer import Transformer
    from flopwise.plan.cost import CostModel
    from flopwise.plan.spec import Cluster, Training

    cfg = _model_config()
    model = Transformer(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (micro_batch, cfg.seq_len))

    def step() -> None:
        logits = model(tokens)
        F.cross_entropy(logits.view(-1, cfg.vocab_size).float(), tokens.view(-1)).backward()

    for _ in range(3):
        step()
    calls = 5
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            step()
    kinds: collections.Counter = collections.Counter()
    for event in prof.key_averages():
        name = "matmuls" if event.key in ("aten::mm", "aten::addmm", "aten::bmm") else kernel_kind(event.key)
        kinds[name] += event.self_cpu_time_total / calls / 1e6
    kinds["the rest"] = kinds.pop("elementwise", 0.0) + kinds.pop("gemm", 0.0)
    acc = hardware.cpu_accelerator()
    cm = CostModel(cfg, Cluster(acc, 1, 1), Training(micro_batch, precision="fp32", software="flopwise"))
    parts = cm.layer_compute(1, False, micro_batch)
    layers = cfg.layers
    head = cm.head_time(1, micro_batch)[0]
    head_gemm = 3.0 * cm.gemm_time(cfg.seq_len * micro_batch, cfg.hidden, cfg.vocab_size)
    planned = {"matmuls": sum(parts["gemm"]) * layers + head_gemm, "attention": sum(parts["attention"]) * layers,
               "the rest": (sum(parts["elementwise"]) + sum(parts.get("dispatch", (0, 0)))) * layers + head - head_gemm}
    print(f"one step, {micro_batch} sequences of {cfg.seq_len} tokens, {layers} blocks of width {cfg.hidden} "
          "(forward, loss, backward; no optimizer)\n")
    print("| kind | measured s (profiler, self CPU) | planner s | planner / measured |")
    print("|---|---|---|---|")
    for name in ("matmuls", "attention", "the rest"):
        print(f"| {name} | {kinds[name]:.4f} | {planned[name]:.4f} | {planned[name] / kinds[name]:.2f} |")
    total_m, total_p = sum(kinds[k] for k in planned), sum(planned.values())
    print(f"| total | {total_m:.4f} | {total_p:.4f} | {total_p / total_m:.2f} |\n")


def _closed_loop(work: Path, shards: Path) -> dict:
    from flopwise.plan.calibrate import calibrate_runs

    runs = fastest_of_rounds(work, shards)
    result = {}
    for label, ceiling in (("capped at 1", 1.0), ("measured ceiling", hardware.MEASURED_EFFICIENCY_CEILING)):
        saved, hardware.MEASURED_EFFICIENCY_CEILING = hardware.MEASURED_EFFICIENCY_CEILING, ceiling
        try:
            report = calibrate_runs([runs["fit-mb8"], runs["fit-mb2"]], [runs["held-out-mb4-full"]],
                                    ["gemm_efficiency"])
        finally:
            hardware.MEASURED_EFFICIENCY_CEILING = saved
        held = next(r for r in report.rows if r["role"] == "holdout")
        result[label] = (report.constants["gemm_efficiency"], held["error_before"], held["error_after"])
    return result


def loop(repeats: int) -> None:
    from tests.conftest import make_shards

    print(f"closed loop, {repeats} repeats: fit gemm_efficiency on mb8 and mb2, error on mb4 with full recompute\n")
    print("| repeat | held-out error before | capped at 1: fitted, error after | measured ceiling: fitted, error "
          "after |")
    print("|---|---|---|---|")
    errors = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_shards(Path(tmp) / "shards", vocab_size=2048, docs=120)
        for i in range(repeats):
            result = _closed_loop(Path(tmp) / f"r{i}", shards)
            (g1, before, after1), (g2, _, after2) = result["capped at 1"], result["measured ceiling"]
            errors["before"].append(abs(before))
            errors["capped"].append(abs(after1))
            errors["ceiling"].append(abs(after2))
            print(f"| {i + 1} | {100 * before:+.1f}% | {g1:.3f}, {100 * after1:+.1f}% | {g2:.3f}, {100 * after2:+.1f}% |",
                  flush=True)
    print("\nheld-out |error|, median / max: " + ", ".join(
        f"{k} {100 * statistics.median(v):.1f}% / {100 * max(v):.1f}%" for k, v in errors.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--parts", default="gemms,profile,loop")
    args = ap.parse_args(argv)
    parts = args.parts.split(",")
    unknown = set(parts) - {"gemms", "profile", "loop"}
    if unknown or args.repeats < 1:
        ap.error(f"--parts takes gemms, profile, loop (not {', '.join(sorted(unknown))}); --repeats at least 1")
    torch.set_num_threads(1)
    import logging

    logging.disable(logging.WARNING)  # the trainer's own progress lines
    print(f"CPU ({platform.machine()}), 1 thread; torch {torch.__version__}, Python {platform.python_version()}; "
          f"{time.strftime('%Y-%m-%d')}\n")
    if "gemms" in parts:
        gemms()
    if "profile" in parts:
        profile()
    if "loop" in parts:
        loop(args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
