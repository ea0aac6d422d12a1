"""ParallelDims: the degrees of a checked layout (flopwise.layout) on a world of ranks -> named DeviceMesh axes.

Axis order (outermost first): pp, dp_replicate, dp_shard, tp. Tensor parallelism is innermost so its
ranks are neighbours (inside one node on a cluster); pipeline stages are outermost (cheapest traffic).
The data-parallel degree splits into dp_shard (the ZeRO shard group, Layout.shard_degree; 1 without ZeRO)
and dp_replicate (copies of it).

Expert parallelism reuses data-parallel ranks: the expert mesh views the same ranks as (pp, ep_dp, ep, tp),
the data-parallel ranks cut into groups of `ep` consecutive ones. An `ep` group splits every MoE layer's
experts among its ranks and exchanges tokens with all-to-all; `ep_dp` joins the dp / ep ranks holding the
same experts, over which their gradients are reduced (the rest of the model reduces over all of dp)."""

from __future__ import annotations

from dataclasses import dataclass

from flopwise.layout import Layout

AXES = ("pp", "dp_replicate", "dp_shard", "tp")
EXPERT_AXES = ("pp", "ep_dp", "ep", "tp")


@dataclass(frozen=True)
class ParallelDims:
    pp: int = 1
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    world_size: int = 1
    ep: int = 1

    @classmethod
    def from_layout(cls, layout: Layout, world_size: int = 1) -> ParallelDims:
        shard = layout.shard_degree if layout.zero else 1
        return cls(layout.pp, layout.dp // shard, shard, layout.tp, world_size, layout.ep)

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard

    def sizes(self) -> dict[str, int]:
        return {"pp": self.pp, "dp_replicate": self.dp_replicate, "dp_shard": self.dp_shard, "tp": self.tp}

    def expert_sizes(self) -> dict[str, int]:
        return {"pp": self.pp, "ep_dp": self.dp // self.ep, "ep": self.ep, "tp": self.tp}


def build_mesh(dims: ParallelDims, device_type: str):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, tuple(dims.sizes().values()), mesh_dim_names=AXES)


def build_expert_mesh(dims: ParallelDims, mesh):
    """The expert view of `mesh`'s ranks (EXPERT_AXES): ep groups of consecutive data-parallel ranks."""
    from torch.distributed.device_mesh import DeviceMesh

    grid = mesh.mesh.reshape(tuple(dims.expert_sizes().values()))
    return DeviceMesh(mesh.device_type, grid, mesh_dim_names=EXPERT_AXES)
