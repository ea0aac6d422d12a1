"""Time one engine decode step at a fixed number of running sequences, in process (no HTTP), and
optionally profile it: where a step's time goes (Python batch building, attention, GEMMs, sampling).

    python benchmarks/serve_step.py --seqs 64 --context 160 --steps 20
    python benchmarks/serve_step.py --seqs 64 --attention torch --profile
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny-llama")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-serve"))
    ap.add_argument("--seqs", type=int, default=64)
    ap.add_argument("--context", type=int, default=128, help="prompt tokens per sequence before decoding")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--attention", default="auto", choices=["auto", "kernel", "torch"])
    ap.add_argument("--profile", action="store_true", help="cProfile the timed steps")
    ap.add_argument("--torch-profile", action="store_true", help="torch.profiler table of the timed steps")
    args = ap.parse_args()

    from flopwise.serve.config import EngineConfig
    from flopwise.serve.engine import Engine
    from flopwise.serve.loader import load_served_model
    from flopwise.serve.sampling import SamplingParams
    from flopwise.serve.toy import random_checkpoint

    torch.set_num_threads(args.threads)
    ckpt = args.out / "checkpoint"
    if not (ckpt / "checkpoints").is_dir():
        root = Path(os.__file__).parent
        random_checkpoint(ckpt, [p.read_text(errors="replace") for p in sorted(root.glob("*.py"))[:80]], args.preset)
    served = load_served_model(ckpt, device="cpu")
    engine = Engine(served, EngineConfig(device="cpu", attention=args.attention, max_num_batched_tokens=8192,
                                         max_num_seqs=max(args.seqs, 1)))
    rng = random.Random(0)
    vocab = served.model.cfg.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=args.steps + 8, ignore_eos=True)
    for _ in range(args.seqs):
        engine.add_request([rng.randrange(1, vocab) for _ in range(args.context)], params)
    while any(s.num_computed < len(s.prompt_ids) for s in engine.requests.values()):
        engine.step()  # prefill (and first tokens)
    for _ in range(2):
        engine.step()  # warm-up
    times, cpu = [], []
    prof = cProfile.Profile(time.process_time) if args.profile else None  # CPU time: robust to load
    tprof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if args.torch_profile else None
    if tprof:
        tprof.__enter__()
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        if prof:
            prof.enable()
        engine.step()
        if prof:
            prof.disable()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    if tprof:
        tprof.__exit__(None, None, None)
        print(tprof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    kernel = "kernel" if engine.cache.kernel is not None else "torch"
    print(f"{args.seqs} seqs, context {args.context}, attention {kernel}, {args.threads} thread(s): step "
          f"median {statistics.median(times) * 1e3:.1f} ms, min {min(times) * 1e3:.1f} ms "
          f"({args.seqs / statistics.median(times):.0f} tok/s); CPU time median {statistics.median(cpu) * 1e3:.1f} ms "
          f"(wall/CPU shows the machine's load: {os.getloadavg()[0]:.1f})")
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
