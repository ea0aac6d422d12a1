"""What the scheduler is told: the cluster (flavors, nodes, queues) and the jobs, in Kueue's vocabulary.

- A **flavor** is one kind of accelerator (Kueue's ResourceFlavor); its `accelerator` names a
  `flopwise.hardware` catalogue entry when the part is known, which is what the planner needs.
- A **node** has GPUs of one flavor, sits in a rack and an NVLink domain (the node itself by default).
- A **ClusterQueue** holds a nominal quota per flavor. Queues in the same **cohort** lend each other their
  unused quota: `borrowing_limit` caps what a queue may take beyond its nominal quota, `lending_limit` caps
  what it lends (the rest of its nominal quota is guaranteed to it). `weight` is its fair-share weight.
- A **LocalQueue** is a team's entry point; it points at one ClusterQueue.
- A **job** (Kueue's Workload) carries the fields of a job TOML: kind, queue, priority, GPUs (a count or
  `min..max` for elastic jobs), allowed flavors in order of preference, gang, topology, preemptible, max
  restarts, checkpoint interval, plus what a speed model needs (an LLM's model, global batch and tokens;
  a Pollux application; a trace job's duration).

Everything here is a frozen dataclass that converts to and from plain dicts (`to_dict`/`from_dict`), so a
caller can keep it in JSON, SQLite or PostgreSQL. Constructors validate; a wrong value raises ConfigError
naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flopwise.config_values import check_value
from flopwise.errors import ConfigError

KINDS = ("train", "data", "serve", "command", "trace")
TOPOLOGIES = ("node", "rack", "any")
DEFAULT_QUEUE = "default"
DEFAULT_RACK_NODES = 16  # nodes per rack when a uniform cluster does not say


def _positive_int(where: str, key: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}{key} = {value!r}: must be an integer >= {minimum}")
    return value


def _name(where: str, key: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}{key} = {value!r}: must be a non-empty string")
    return value


@dataclass(frozen=True)
class Flavor:
    """One kind of accelerator. `accelerator`: a hardware catalogue name (None: unknown part, no speed model)."""

    name: str
    accelerator: str | None = None
    inter_node_gbps: float = 25.0  # network bandwidth per GPU between nodes, GB/s one direction (planner input)

    def __post_init__(self) -> None:
        _name("flavor ", "name", self.name)
        if not isinstance(self.inter_node_gbps, int | float) or self.inter_node_gbps <= 0:
            raise ConfigError(f"flavor {self.name}: inter_node_gbps = {self.inter_node_gbps!r}: must be positive")


@dataclass(frozen=True)
class NodeSpec:
    name: str
    flavor: str
    gpus: int
    rack: str = "rack-0"
    nvlink_domain: str = ""  # "": the node itself

    def __post_init__(self) -> None:
        _name("node ", "name", self.name)
        _positive_int(f"node {self.name}: ", "gpus", self.gpus)

    @property
    def domain(self) -> str:
        return self.nvlink_domain or self.name


@dataclass(frozen=True)
class ClusterQueue:
    """Nominal quota per flavor (GPUs); limits are per flavor, None = no limit. `quota=None`: no quota at
    all, only the cluster's capacity bounds the queue (the default queue; it cannot join a cohort)."""

    name: str
    quota: dict[str, int] | None = field(default_factory=dict)
    cohort: str | None = None
    borrowing_limit: dict[str, int] | None = None
    lending_limit: dict[str, int] | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        where = f"queue {self.name}: "
        _name("queue ", "name", self.name)
        if self.quota is None and self.cohort is not None:
            raise ConfigError(f"{where}a queue without quota cannot join cohort {self.cohort!r}: give it a quota")
        for key in ("quota", "borrowing_limit", "lending_limit"):
            table = getattr(self, key)
            if table is None:
                continue
            if not isinstance(table, dict):
                raise ConfigError(f"{where}{key} = {table!r}: must be a table of flavor = GPUs")
            for flavor, amount in table.items():
                _positive_int(where, f"{key}.{flavor}", amount, minimum=0)
        if not isinstance(self.weight, int | float) or isinstance(self.weight, bool) or self.weight <= 0:
            raise ConfigError(f"{where}weight = {self.weight!r}: must be a positive number")
        if self.lending_limit:
            for flavor, amount in self.lending_limit.items():
                if amount > self.nominal(flavor):
                    raise ConfigError(
                        f"{where}lending_limit.{flavor} = {amount}: must not exceed the nominal quota "
                        f"({self.nominal(flavor)})"
                    )

    def nominal(self, flavor: str) -> float:
        return math.inf if self.quota is None else self.quota.get(flavor, 0)

    def borrow_cap(self, flavor: str) -> float:
        if self.cohort is None:
            return 0.0
        if self.borrowing_limit is None or flavor not in self.borrowing_limit:
            return math.inf
        return float(self.borrowing_limit[flavor])

    def lendable(self, flavor: str) -> float:
        """How much of the nominal quota other queues of the cohort may use while this one does not."""
        if self.cohort is None:
            return 0
        if self.lending_limit is None or flavor not in self.lending_limit:
            return self.nominal(flavor)
        return self.lending_limit[flavor]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LocalQueue:
    name: str
    cluster_queue: str


@dataclass(frozen=True)
class JobSpec:
    """A job as submitted. `gpus` is the count a fixed-size policy gives it; `min_gpus..max_gpus` is the
    range an elastic policy may choose from (both default to `gpus`).

    checkpoint_interval_s: 0 = the job saves a checkpoint when it is preempted (flopwise's trainer does on
    SIGTERM), so a preemption loses only the restart; > 0 = periodic checkpoints, and the work since the
    last one is lost. A crash (node down, failure) always loses the work since the last periodic
    checkpoint, or since the start of the run when there is none."""

    name: str
    kind: str = "command"
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    gpus: int = 1
    min_gpus: int = 0  # 0: = gpus
    max_gpus: int = 0  # 0: = gpus
    flavors: tuple[str, ...] = ()  # allowed flavors in order of preference; empty = any
    gang: bool = True  # all GPUs at once or none
    topology: str = "any"  # node | rack | any: how close the GPUs must be
    preemptible: bool = True
    max_restarts: int = 3
    checkpoint_interval_s: float = 0.0
    submit_time: float = 0.0
    # what the job does (for speed models); all optional
    model: str | None = None  # LLM: a preset name
    model_overrides: tuple[tuple[str, Any], ...] = ()  # LLM: ModelConfig fields that override the preset
    global_batch: int | None = None  # sequences per step (LLM) or samples per step (Pollux app)
    tokens: float | None = None  # LLM: tokens to train
    app: str | None = None  # a Pollux artifact application (cifar10, bert, ...)
    adaptive_batch: bool = False  # the job may change its batch size (Pollux-style statistical efficiency)
    duration_s: float | None = None  # trace job: run time at `gpus` GPUs
    config: str | None = None  # the flopwise config the job runs (used by the live service)

    def __post_init__(self) -> None:
        where = f"job {self.name}: "
        _name("job ", "name", self.name)
        if self.kind not in KINDS:
            raise ConfigError(f"{where}kind = {self.kind!r}: must be one of {', '.join(KINDS)}")
        _name(where, "queue", self.queue)
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise ConfigError(f"{where}priority = {self.priority!r}: must be an integer")
        _positive_int(where, "gpus", self.gpus, minimum=0)
        lo = _positive_int(where, "min_gpus", self.min_gpus, minimum=0) or self.gpus
        hi = _positive_int(where, "max_gpus", self.max_gpus, minimum=0) or self.gpus
        if not lo <= self.gpus <= hi:
            raise ConfigError(f"{where}gpus = {self.gpus}: must lie within min_gpus..max_gpus = {lo}..{hi}")
        object.__setattr__(self, "min_gpus", lo)
        object.__setattr__(self, "max_gpus", hi)
        if isinstance(self.flavors, str) or not all(isinstance(f, str) for f in self.flavors):
            raise ConfigError(f"{where}flavors = {self.flavors!r}: must be a list of flavor names")
        object.__setattr__(self, "flavors", tuple(self.flavors))
        if self.topology not in TOPOLOGIES:
            raise ConfigError(f"{where}topology = {self.topology!r}: must be one of {', '.join(TOPOLOGIES)}")
        _positive_int(where, "max_restarts", self.max_restarts, minimum=0)
        for key in ("checkpoint_interval_s", "submit_time"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{where}{key} = {value!r}: must be a non-negative number")
        for key in ("tokens", "duration_s"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int | float) or not value > 0 or not math.isfinite(value)):
                raise ConfigError(f"{where}{key} = {value!r}: must be a positive number")
        if self.global_batch is not None:
            _positive_int(where, "global_batch", self.global_batch)
        object.__setattr__(self, "model_overrides", tuple(tuple(kv) for kv in self.model_overrides))

    @property
    def elastic(self) -> bool:
        return self.min_gpus < self.max_gpus

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["flavors"] = list(self.flavors)
        d["model_overrides"] = dict(self.model_overrides)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> JobSpec:
        """From a job TOML table or a `to_dict` result. `gpus` may be a count or a 'min..max' string."""
        data = dict(data)
        name = data.get("name", "?")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"job {name}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        gpus = data.get("gpus", 1)
        if isinstance(gpus, str):
            lo, hi = parse_gpu_range(gpus, f"job {name}: gpus")
            data.setdefault("min_gpus", lo)
            data.setdefault("max_gpus", hi)
            data["gpus"] = hi
        model = data.get("model")
        if isinstance(model, dict):  # model = { preset = "yuan-1b", layers = 8 }
            model = dict(model)
            if "preset" not in model:
                raise ConfigError(f"job {name}: model table needs a preset key")
            data["model"] = model.pop("preset")
            data["model_overrides"] = tuple(sorted(model.items()))
        elif isinstance(data.get("model_overrides"), dict):
            data["model_overrides"] = tuple(sorted(data["model_overrides"].items()))
        for key in ("name", "kind", "queue", "topology", "config", "app"):
            if data.get(key) is not None:
                check_value(f"job {name}: {key}", data[key], "str")
        for key in ("priority", "gpus", "min_gpus", "max_gpus", "max_restarts", "global_batch"):
            if data.get(key) is not None:
                check_value(f"job {name}: {key}", data[key], "int")
        for key in ("gang", "preemptible", "adaptive_batch"):
            if key in data:
                check_value(f"job {name}: {key}", data[key], "bool")
        for key in ("checkpoint_interval_s", "submit_time", "tokens", "duration_s"):
            if data.get(key) is not None:
                data[key] = check_value(f"job {name}: {key}", data[key], "float")
        if "flavors" in data:
            data["flavors"] = tuple(check_value(f"job {name}: flavors", list(data["flavors"]), "list[str]"))
        return cls(**data)


def parse_gpu_range(text: str, where: str) -> tuple[int, int]:
    """'4' -> (4, 4); '2..8' -> (2, 8)."""
    parts = text.split("..")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{where} = {text!r}: expected a count or min..max, e.g. 2..8") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or values[0] < 1 or values[0] > values[1]:
        raise ConfigError(f"{where} = {text!r}: expected min..max with 1 <= min <= max")
    return values[0], values[1]


@dataclass(frozen=True)
class ClusterSpec:
    flavors: dict[str, Flavor]
    nodes: tuple[NodeSpec, ...]
    cluster_queues: dict[str, ClusterQueue]
    local_queues: dict[str, LocalQueue]

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ConfigError("cluster: no nodes")
        seen: set[str] = set()
        for node in self.nodes:
            if node.name in seen:
                raise ConfigError(f"cluster: node name {node.name!r} appears twice")
            seen.add(node.name)
            if node.flavor not in self.flavors:
                raise ConfigError(f"node {node.name}: flavor = {node.flavor!r} is not defined")
        for cq in self.cluster_queues.values():
            for key in ("quota", "borrowing_limit", "lending_limit"):
                for flavor in getattr(cq, key) or {}:
                    if flavor not in self.flavors:
                        raise ConfigError(
                            f"queue {cq.name}: {key}.{flavor}: unknown flavor; defined: {', '.join(self.flavors)}"
                        )
        for lq in self.local_queues.values():
            if lq.cluster_queue not in self.cluster_queues:
                raise ConfigError(
                    f"local queue {lq.name}: cluster_queue = {lq.cluster_queue!r} is not defined; "
                    f"defined: {', '.join(self.cluster_queues)}"
                )

    # -- facts derived once ------------------------------------------------------------------------------
    def capacity(self, flavor: str | None = None) -> int:
        return sum(n.gpus for n in self.nodes if flavor is None or n.flavor == flavor)

    @property
    def total_gpus(self) -> int:
        return self.capacity()

    def gpus_per_node(self, flavor: str) -> int:
        """The largest node of a flavor (placements of more GPUs span nodes)."""
        return max((n.gpus for n in self.nodes if n.flavor == flavor), default=0)

    def queue_of(self, local_queue: str) -> ClusterQueue | None:
        lq = self.local_queues.get(local_queue)
        return self.cluster_queues.get(lq.cluster_queue) if lq else None

    # -- constructors ------------------------------------------------------------------------------------
    @classmethod
    def uniform(
        cls,
        nodes: int,
        gpus_per_node: int,
        accelerator: str | None = None,
        flavor: str | None = None,
        rack_nodes: int = DEFAULT_RACK_NODES,
        queues: dict[str, ClusterQueue] | None = None,
        local_queues: dict[str, LocalQueue] | None = None,
    ) -> ClusterSpec:
        """`nodes` identical nodes, one flavor, racks of `rack_nodes`; one default queue unless given."""
        _positive_int("cluster ", "nodes", nodes)
        _positive_int("cluster ", "gpus_per_node", gpus_per_node)
        name = flavor or accelerator or "gpu"
        node_list = tuple(
            NodeSpec(f"node-{i:04d}", name, gpus_per_node, rack=f"rack-{i // rack_nodes}") for i in range(nodes)
        )
        flavors = {name: Flavor(name, accelerator)}
        return cls.build(flavors, node_list, queues, local_queues)

    @classmethod
    def build(
        cls,
        flavors: dict[str, Flavor],
        nodes: tuple[NodeSpec, ...],
        queues: dict[str, ClusterQueue] | None = None,
        local_queues: dict[str, LocalQueue] | None = None,
    ) -> ClusterSpec:
        """A cluster; without queues, one ClusterQueue `default` without quota (all GPUs, nodes added later
        included), with a LocalQueue `default`."""
        if not queues:
            queues = {DEFAULT_QUEUE: ClusterQueue(DEFAULT_QUEUE, None)}
        if local_queues is None:
            local_queues = {name: LocalQueue(name, name) for name in queues}
        return cls(dict(flavors), tuple(nodes), dict(queues), dict(local_queues))

    @classmethod
    def from_dict(cls, data: dict, where: str = "cluster") -> ClusterSpec:
        """The cluster TOML's tables (see `load_cluster`)."""
        allowed = {"flavors", "nodes", "queues", "local_queues"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        flavors: dict[str, Flavor] = {}
        for i, row in enumerate(data.get("flavors", [])):
            row = _table(row, f"{where}: flavors[{i}]", {"name", "accelerator", "inter_node_gbps"})
            flavor = Flavor(row["name"] if "name" in row else "", row.get("accelerator"), row.get("inter_node_gbps", 25.0))
            flavors[flavor.name] = flavor
        nodes: list[NodeSpec] = []
        for i, row in enumerate(data.get("nodes", [])):
            row = _table(row, f"{where}: nodes[{i}]", {"name", "count", "gpus", "flavor", "accelerator", "rack",
                                                     "rack_nodes", "nvlink_domain"})
            if "gpus" not in row:
                raise ConfigError(f"{where}: nodes[{i}]: missing key gpus")
            flavor_name = row.get("flavor") or row.get("accelerator")
            if not flavor_name:
                raise ConfigError(f"{where}: nodes[{i}]: give flavor (a [[flavors]] name) or accelerator")
            if flavor_name not in flavors:
                flavors[flavor_name] = Flavor(flavor_name, row.get("accelerator"))
            count = _positive_int(f"{where}: nodes[{i}]: ", "count", row.get("count", 1))
            rack_nodes = _positive_int(f"{where}: nodes[{i}]: ", "rack_nodes", row.get("rack_nodes", DEFAULT_RACK_NODES))
            base = row.get("name", f"{flavor_name}-{i}")
            for k in range(count):
                name = base if count == 1 else f"{base}-{k:04d}"
                rack = row.get("rack") or f"{base}-rack-{k // rack_nodes}"
                nodes.append(NodeSpec(name, flavor_name, row["gpus"], rack=rack, nvlink_domain=row.get("nvlink_domain", "")))
        queues: dict[str, ClusterQueue] = {}
        for i, row in enumerate(data.get("queues", [])):
            row = _table(row, f"{where}: queues[{i}]", {"name", "quota", "cohort", "borrowing_limit", "lending_limit",
                                                      "weight"})
            if "quota" in row and not isinstance(row["quota"], dict):
                raise ConfigError(f"{where}: queues[{i}]: quota must be a table of flavor = GPUs")
            cq = ClusterQueue(
                row.get("name", ""),
                dict(row["quota"]) if "quota" in row else None,
                row.get("cohort"),
                row.get("borrowing_limit"),
                row.get("lending_limit"),
                row.get("weight", 1.0),
            )
            queues[cq.name] = cq
        local: dict[str, LocalQueue] | None = None
        if "local_queues" in data:
            local = {}
            for i, row in enumerate(data["local_queues"]):
                row = _table(row, f"{where}: local_queues[{i}]", {"name", "cluster_queue"})
                if "name" not in row or "cluster_queue" not in row:
                    raise ConfigError(f"{where}: local_queues[{i}]: needs name and cluster_queue")
                local[row["name"]] = LocalQueue(row["name"], row["cluster_queue"])
            for cq in queues:  # every ClusterQueue is reachable under its own name too
                local.setdefault(cq, LocalQueue(cq, cq))
        return cls.build(flavors, tuple(nodes), queues or None, local)

    def to_dict(self) -> dict:
        return {
            "flavors": [dataclasses.asdict(f) for f in self.flavors.values()],
            "nodes": [dataclasses.asdict(n) for n in self.nodes],
            "queues": [q.to_dict() for q in self.cluster_queues.values()],
            "local_queues": [dataclasses.asdict(q) for q in self.local_queues.values()],
        }


def _table(row, where: str, allowed: set[str]) -> dict:
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected a table, got {row!r}")
    unknown = sorted(set(row) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return row


def load_cluster(path: str | Path) -> ClusterSpec:
    """A cluster TOML:

    [[flavors]]                      # optional: a flavor per accelerator type (nodes may name one directly)
    name = "a100"; accelerator = "A100-80GB"; inter_node_gbps = 25
    [[nodes]]
    count = 4; gpus = 8; flavor = "a100"; rack_nodes = 2      # or accelerator = "A100-80GB"
    [[queues]]                       # ClusterQueues; without any, one `default` queue owns every GPU
    name = "research"; cohort = "org"; quota = { a100 = 16 }; borrowing_limit = { a100 = 8 }; weight = 2
    [[local_queues]]
    name = "team-a"; cluster_queue = "research"
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read cluster file {path}: {exc}") from None
    return ClusterSpec.from_dict(data, where=f"cluster file {path}")
