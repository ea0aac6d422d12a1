"""Training-step throughput: flopwise against Hugging Face transformers' Llama, same shape, same run.

Both models get the same width, depth, heads, FFN, vocabulary and sequence length; each step is forward,
fp32 cross-entropy, backward and an AdamW step (bf16 autocast on GPU). Timings alternate between the
models in rounds so machine noise hits both alike; the ratio is the figure to quote.

    python benchmarks/train_step.py                       # CPU: the `tiny` shape
    python benchmarks/train_step.py --preset yuan-1b --batch 4 --compile   # GPU: ~1B parameters, bf16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from flopwise.flops import model_flops_per_token, param_counts
from flopwise.hardware import detect
from flopwise.models import Transformer, get_preset


def hf_llama(cfg):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, intermediate_size=cfg.ffn, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.seq_len,
        rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_base, tie_word_embeddings=True, attention_bias=False,
        mlp_bias=False, attn_implementation="sdpa",
    )
    return LlamaForCausalLM(hf_cfg)


def make_step(model, device, amp, is_hf):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    def step(x, y):
        with autocast():
            logits = model(input_ids=x).logits if is_hf else model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None, help="default: tiny on CPU, yuan-1b on GPU")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd flopwise")
    ap.add_argument("--json", default=None, help="write results to this file")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = args.preset or ("yuan-1b" if device.type == "cuda" else "tiny")
    base = get_preset(preset)
    seq = args.seq or base.seq_len
    batch = args.batch or (4 if device.type == "cuda" else 8)
    amp = device.type == "cuda"
    acc = detect(device)
    torch.manual_seed(0)

    variants = {}
    for lfa in (False, True):
        cfg = base.replace(lfa=lfa, seq_len=max(seq, base.seq_len))
        variants[f"flopwise lfa={'on' if lfa else 'off'}"] = (cfg, Transformer(cfg).to(device), False)
    plain = base.replace(lfa=False, seq_len=max(seq, base.seq_len))
    variants["transformers Llama"] = (plain, hf_llama(plain).to(device), True)
    if args.compile:
        cfg = base.replace(lfa=False, seq_len=max(seq, base.seq_len))
        variants["flopwise lfa=off compiled"] = (cfg, torch.compile(Transformer(cfg).to(device)), False)
        cfg = base.replace(lfa=True, seq_len=max(seq, base.seq_len))
        variants["flopwise lfa=on compiled"] = (cfg, torch.compile(Transformer(cfg).to(device)), False)

    x = torch.randint(0, base.vocab_size, (batch, seq), device=device)
    y = torch.randint(0, base.vocab_size, (batch, seq), device=device)
    steps = {name: make_step(model, device, amp, is_hf) for name, (_, model, is_hf) in variants.items()}
    for step in steps.values():  # warm-up (and compilation)
        for _ in range(2):
            step(x, y)
        sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step(x, y)
            sync(device)
            times[name].append((time.perf_counter() - start) / args.steps)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    results = []
    for name, (cfg, model, _) in variants.items():
        per_step = statistics.median(times[name])
        tps = batch * seq / per_step
        results.append({
            "model": name, "params": sum(p.numel() for p in model.parameters()),
            "tokens_per_s": tps, "step_s": per_step,
            "mfu": tps * model_flops_per_token(cfg, seq) / acc.peak_flops if acc.peak_flops else 0.0,
        })
    ref = next(r for r in results if r["model"] == "transformers Llama")["tokens_per_s"]
    for r in results:
        r["vs_transformers"] = r["tokens_per_s"] / ref
    meta = {
        "preset": preset, "batch": batch, "seq": seq, "device": acc.name, "peak_flops": acc.peak_flops,
        "peak_label": acc.peak_label, "torch": torch.__version__, "python": platform.python_version(),
        "amp_bf16": amp, "params_non_embedding": param_counts(base).non_embedding,
        "date": time.strftime("%Y-%m-%d"),
    }
    try:
        import transformers

        meta["transformers"] = transformers.__version__
    except ImportError:
        pass
    print(json.dumps(meta))
    print(f"{'model':<30}{'params':>12}{'tokens/s':>12}{'MFU':>8}{'vs HF':>8}")
    for r in results:
        print(f"{r['model']:<30}{r['params'] / 1e6:>11.2f}M{r['tokens_per_s']:>12,.0f}{100 * r['mfu']:>7.1f}%"
              f"{r['vs_transformers']:>7.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
