"""Where a job's GPUs go: topology-aware, consolidating a gang, avoiding fragmentation.

`pack` (the default): a job that fits one node goes to the node whose free GPUs fit it most tightly (best
fit: it leaves whole nodes whole for large jobs); a larger job takes the rack whose free GPUs fit it most
tightly, whole free nodes first and the remainder best-fit, so it spans as few nodes and racks as possible.
`topology = "node"` allows one node only (or one NVLink domain when nodes share one, e.g. an NVL72 rack),
`"rack"` one rack, `"any"` prefers one rack but may span racks.

`spread`: the nodes with the most free GPUs first, as the Pollux artifact's Tiresias places a gang
(`simulator/tiresias.py`): simple, and it spreads jobs over nodes.
"""

from __future__ import annotations

from collections.abc import Iterable

from flopwise.cluster.events import Placement
from flopwise.cluster.spec import NodeSpec

STRATEGIES = ("pack", "spread")


class Topology:
    """The nodes by flavor and by rack, in a fixed order (the cluster spec's, then nodes added later)."""

    def __init__(self, nodes: Iterable[NodeSpec]) -> None:
        self.nodes: dict[str, NodeSpec] = {}
        self.index: dict[str, int] = {}
        self.by_flavor: dict[str, list[str]] = {}
        self.racks: dict[str, dict[str, list[str]]] = {}  # flavor -> rack -> nodes
        self.domains: dict[str, dict[str, list[str]]] = {}  # flavor -> NVLink domain -> nodes
        for node in nodes:
            self.index[node.name] = len(self.nodes)
            self.nodes[node.name] = node
            self.by_flavor.setdefault(node.flavor, []).append(node.name)
            self.racks.setdefault(node.flavor, {}).setdefault(node.rack, []).append(node.name)
            self.domains.setdefault(node.flavor, {}).setdefault(node.domain, []).append(node.name)
        self.node_max = {f: max(self.nodes[n].gpus for n in names) for f, names in self.by_flavor.items()}
        # topology "node" means one NVLink domain: a node, or several nodes joined by NVLink (e.g. NVL72)
        self.domain_max = {
            f: max(sum(self.nodes[n].gpus for n in names) for names in doms.values()) for f, doms in self.domains.items()
        }
        self.rack_max = {
            f: max(sum(self.nodes[n].gpus for n in names) for names in racks.values()) for f, racks in self.racks.items()
        }
        self.capacity = {f: sum(self.nodes[n].gpus for n in names) for f, names in self.by_flavor.items()}

    def largest(self, flavor: str, topology: str) -> int:
        """The most GPUs one placement of `topology` can get on `flavor` nodes."""
        if flavor not in self.by_flavor:
            return 0
        return {"node": self.domain_max, "rack": self.rack_max}.get(topology, self.capacity)[flavor]

    def valid_sizes(self, flavor: str, lo: int, hi: int, gang: bool) -> list[int]:
        """GPU counts an elastic job may take on `flavor`, largest first: any count up to a node, whole
        nodes beyond (a gang split unevenly over nodes runs at its slowest node's pace)."""
        per_node = self.node_max.get(flavor, 0)
        if per_node == 0:
            return []
        if not gang:
            return list(range(hi, lo - 1, -1))
        sizes = [n for n in range(lo, min(hi, per_node) + 1)]
        sizes += [k * per_node for k in range(2, hi // per_node + 1) if k * per_node >= lo]
        return sorted(set(sizes), reverse=True)


def place(
    topo: Topology,
    free: dict[str, int],
    flavor: str,
    gpus: int,
    topology: str = "any",
    strategy: str = "pack",
    prefer: Iterable[str] = (),
) -> Placement | None:
    """A placement of `gpus` GPUs of `flavor` on nodes with free GPUs, or None. `prefer`: nodes to use first
    (a resized job keeps its nodes when it can)."""
    names = topo.by_flavor.get(flavor)
    if not names or gpus < 1:
        return None
    index = topo.index
    preferred = set(prefer)
    if strategy == "spread":
        if topology == "node":
            return _best_single(names, free, gpus, index, preferred)
        return _fill_most_free([n for n in names if free.get(n, 0) > 0], free, gpus, index)
    if gpus <= topo.node_max[flavor]:
        one = _best_single(names, free, gpus, index, preferred)
        if one is not None or (topology == "node" and topo.domain_max[flavor] == topo.node_max[flavor]):
            return one
    elif topology == "node" and topo.domain_max[flavor] == topo.node_max[flavor]:
        return None
    # several nodes: the rack (NVLink domain for topology "node") whose free GPUs fit the job most
    # tightly, then (topology any) all nodes
    groups = topo.domains[flavor] if topology == "node" else topo.racks[flavor]
    best_rack, best_free = None, None
    for rack_nodes in groups.values():
        total = sum(free.get(n, 0) for n in rack_nodes)
        if total >= gpus and (best_free is None or total < best_free):
            best_rack, best_free = rack_nodes, total
    if best_rack is not None:
        return _fill(best_rack, free, gpus, index, preferred)
    if topology in ("rack", "node"):
        return None
    if sum(free.get(n, 0) for n in names) < gpus:
        return None
    return _fill(names, free, gpus, index, preferred)


def _best_single(names, free, gpus, index, preferred) -> Placement | None:
    best, best_key = None, None
    for n in names:
        f = free.get(n, 0)
        if f >= gpus:
            key = (n not in preferred, f, index[n])
            if best_key is None or key < best_key:
                best, best_key = n, key
    return ((best, gpus),) if best is not None else None


def _fill(names, free, gpus, index, preferred) -> Placement | None:
    """Whole free nodes, largest first; the remainder on the node that fits it most tightly."""
    cands = sorted((n for n in names if free.get(n, 0) > 0), key=lambda n: (n not in preferred, -free[n], index[n]))
    out: list[tuple[str, int]] = []
    left = gpus
    while left > 0 and cands:
        fit = [n for n in cands if free[n] >= left]
        if fit:
            n = min(fit, key=lambda n: (n not in preferred, free[n], index[n]))
            out.append((n, left))
            return tuple(out)
        n = cands.pop(0)
        out.append((n, free[n]))
        left -= free[n]
    return None


def _fill_most_free(names, free, gpus, index) -> Placement | None:
    out: list[tuple[str, int]] = []
    left = gpus
    for n in sorted(names, key=lambda n: (-free[n], index[n])):
        take = min(free[n], left)
        out.append((n, take))
        left -= take
        if left == 0:
            return tuple(out)
    return None
