"""LLM jobs' speed from the planner: the one module of `flopwise.cluster` that calls `flopwise.plan`.

`llm_speed(model, accelerator, gpus, gpus_per_node, global_batch, inter_node_gbps)` asks the planner's
layout search for the fastest layout that fits and returns its tokens per second (or why nothing fits).
Searches take 0.1-1 s, so answers are cached in memory and, when a cache file is given, on disk (keyed by
every input, model shape included, so a changed model or accelerator is a new entry).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from flopwise.atomic import atomic_write_json
from flopwise.errors import ConfigError, PlanError
from flopwise.hardware import GB, Accelerator, training_precision
from flopwise.models.config import ModelConfig, get_preset
from flopwise.plan import Cluster, Training, search
from flopwise.plan.cost import DEFAULT_CONSTANTS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LLMSpeed:
    tokens_per_s: float  # 0 when nothing fits
    layout: str  # the planner's best layout, or why nothing fits
    mfu: float = 0.0


def model_config(preset: str, overrides: tuple[tuple[str, object], ...] = ()) -> ModelConfig:
    cfg = get_preset(preset)
    if overrides:
        fields = {f.name for f in dataclasses.fields(cfg)}
        bad = [k for k, _ in overrides if k not in fields]
        if bad:
            raise ConfigError(f"model {preset}: unknown field(s) {', '.join(bad)}; allowed: {', '.join(sorted(fields))}")
        cfg = cfg.replace(**dict(overrides))
    return cfg


class PlannerSpeeds:
    """Cached planner predictions. `cache_file`: a JSON file kept across runs (written atomically)."""

    def __init__(self, cache_file: str | Path | None = None) -> None:
        self.cache_file = Path(cache_file) if cache_file else None
        self._cache: dict[str, LLMSpeed] = {}
        self._dirty = 0
        if self.cache_file and self.cache_file.is_file():
            try:
                raw = json.loads(self.cache_file.read_text())
                self._cache = {k: LLMSpeed(**v) for k, v in raw.items()}
            except (OSError, ValueError, TypeError) as exc:
                log.warning("ignoring unreadable planner cache %s: %s", self.cache_file, exc)

    def speed(
        self,
        model: ModelConfig,
        accelerator: Accelerator,
        gpus: int,
        gpus_per_node: int,
        global_batch: int,
        inter_node_gbps: float = 25.0,
    ) -> LLMSpeed:
        training = Training(global_batch, precision=training_precision(accelerator))
        # the planner's own facts are in the key too: a cache written before its profile or constants changed
        # must not answer after
        key_src = json.dumps(
            [model.to_dict(), dataclasses.asdict(accelerator), gpus, gpus_per_node, global_batch, inter_node_gbps,
             training.precision, dataclasses.asdict(training.profile), dataclasses.asdict(DEFAULT_CONSTANTS)],
            sort_keys=True,
        )
        key = hashlib.sha1(key_src.encode()).hexdigest()
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        try:
            cluster = Cluster(accelerator, gpus, gpus_per_node, inter_node_bw=inter_node_gbps * GB)
            result = search(model, cluster, training, top=1, explain=False)
            plan = result.plans[0]
            tokens = global_batch * model.seq_len / plan.step_time
            value = LLMSpeed(tokens, plan.layout.short(), plan.mfu)
        except PlanError:  # (the planner's explanation searches alternatives: too slow to ask here)
            value = LLMSpeed(0.0, f"no layout fits {gpus} x {accelerator.name} memory at global batch {global_batch}")
        except ConfigError as exc:
            value = LLMSpeed(0.0, str(exc))
        self._cache[key] = value
        self._dirty += 1
        return value

    def save(self) -> None:
        """Write the cache file (if any) when new predictions were made."""
        if self.cache_file is None or not self._dirty:
            return
        atomic_write_json(self.cache_file, {k: dataclasses.asdict(v) for k, v in self._cache.items()})
        self._dirty = 0
