"""Host time per transformer block under the PyTorch-native wrappers (DTensor TP, FSDP2, full recomputation, bf16
autocast, and their combinations), as a markdown table for RESULTS.md.

The measurement is flopwise.plan.host_probe's (`flopwise plan host-probe` prints the same figures for a user, to pass
as `--block-host-ms`); this adds the per-op figure and the ratio to plain eager.

    .venv/bin/python benchmarks/host_per_block.py               # world 8, 40 repeats, this CPU
    .venv/bin/python benchmarks/host_per_block.py --world 4 --repeats 80
    .venv/bin/python benchmarks/host_per_block.py --device cuda # on a GPU server: the kernel launches included
"""

from __future__ import annotations

import argparse
import sys

import torch

from flopwise.plan import host_probe


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=8, help="the TP degree and the FSDP degree (a fake world of its square)")
    ap.add_argument("--repeats", type=int, default=40, help="timed steps per wrapper (the median is reported)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    args = ap.parse_args(argv)
    ops = host_probe.plain_block_ops()
    times = host_probe.measure(world=args.world, repeats=args.repeats, device=args.device)
    print(f"torch {torch.__version__}, {args.device}, world {args.world}, block width {host_probe.WIDTH}, "
          f"{host_probe.TOKENS} tokens, {ops} ATen ops per plain block (forward + backward), one thread")
    print("| wrapper | host ms per block, forward | forward + backward | us per plain op | x eager |")
    print("|---|---|---|---|---|")
    base = times[0].step_s
    for t in times:
        print(f"| {t.wrapper} | {1e3 * t.forward_s:.2f} | {1e3 * t.step_s:.2f} | {1e6 * t.step_s / ops:.1f} "
              f"| {t.step_s / base:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
