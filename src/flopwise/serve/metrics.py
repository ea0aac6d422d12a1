"""Prometheus metrics of the server (names follow vLLM's where they mean the same thing)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServeMetrics:
    def __init__(self, model_name: str):
        self.registry = r = CollectorRegistry()
        self.ttft = Histogram("flopwise_time_to_first_token_seconds", "Time from arrival to the first token",
                              registry=r, buckets=_LATENCY)
        self.tpot = Histogram("flopwise_time_per_output_token_seconds", "Mean time between output tokens of a request",
                              registry=r, buckets=_LATENCY)
        self.e2e = Histogram("flopwise_e2e_request_latency_seconds", "Time from arrival to the last token",
                             registry=r, buckets=_LATENCY)
        self.running = Gauge("flopwise_num_requests_running", "Requests in the running batch", registry=r)
        self.waiting = Gauge("flopwise_num_requests_waiting", "Requests waiting to be scheduled", registry=r)
        self.kv_usage = Gauge("flopwise_kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0-1)", registry=r)
        self.prompt_tokens = Counter("flopwise_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("flopwise_generation_tokens", "Generated tokens of finished requests",
                                         registry=r)
        self.finished = Counter("flopwise_request_success", "Finished requests", ["finish_reason"], registry=r)
        self.aborted = Counter("flopwise_request_aborted", "Requests aborted (client gone)", registry=r)
        self.preemptions = Gauge("flopwise_num_preemptions", "Preemptions so far (recompute)", registry=r)
        self.prefix_queries = Gauge("flopwise_prefix_cache_queries", "Blocks looked up in the prefix cache", registry=r)
        self.prefix_hits = Gauge("flopwise_prefix_cache_hits", "Blocks found in the prefix cache", registry=r)
        self.info = Gauge("flopwise_model_info", "The served model", ["model"], registry=r)
        self.info.labels(model=model_name).set(1)

    def on_step(self, stats: dict) -> None:
        self.running.set(stats["running"])
        self.waiting.set(stats["waiting"])
        self.kv_usage.set(stats["kv_cache_usage"])
        self.preemptions.set(stats["preemptions"])
        self.prefix_queries.set(stats["prefix_cache_queries"])
        self.prefix_hits.set(stats["prefix_cache_hits"])

    def on_finished(self, out, arrival: float, first: float, last: float) -> None:
        self.e2e.observe(last - arrival)
        if out.output_tokens > 1:
            self.tpot.observe((last - first) / (out.output_tokens - 1))
        self.prompt_tokens.inc(out.prompt_tokens)
        self.generation_tokens.inc(out.output_tokens)
        self.finished.labels(finish_reason=out.finish_reason or "stop").inc()

    def render(self, stats: dict) -> bytes:
        self.on_step(stats)
        return generate_latest(self.registry)
