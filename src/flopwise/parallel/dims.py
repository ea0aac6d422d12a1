"""ParallelDims: degrees of parallelism -> validated layout -> named DeviceMesh axes.

Axis order (outermost first): pp, dp_replicate, dp_shard, tp. Tensor parallelism is innermost so its
ranks are neighbours (inside one node on a cluster); pipeline stages are outermost (cheapest traffic)."""

from __future__ import annotations

from dataclasses import dataclass

from flopwise.errors import ParallelError
from flopwise.models.config import ModelConfig

AXES = ("pp", "dp_replicate", "dp_shard", "tp")


@dataclass(frozen=True)
class ParallelDims:
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    pp: int = 1
    world_size: int = 1

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard

    def sizes(self) -> dict[str, int]:
        return {"pp": self.pp, "dp_replicate": self.dp_replicate, "dp_shard": self.dp_shard, "tp": self.tp}

    def describe(self) -> str:
        parts = [f"{name}{size}" for name, size in self.sizes().items() if size > 1]
        return "x".join(parts) or "single"

    def validate(self, model: ModelConfig, *, zero: int = 0, local_batch: int | None = None,
                 micro_batch: int | None = None, pp_schedule: str = "1f1b", pp_chunks: int = 1,
                 seq_len: int | None = None) -> None:
        """Raise ParallelError naming the first broken constraint and its numbers."""
        for name, size in self.sizes().items():
            if size < 1:
                raise ParallelError(f"parallel.{name} = {size}: must be at least 1")
        product = self.pp * self.dp_replicate * self.dp_shard * self.tp
        if product != self.world_size:
            raise ParallelError(
                f"pp x dp_replicate x dp_shard x tp = {self.pp} x {self.dp_replicate} x {self.dp_shard} x {self.tp} "
                f"= {product}, but the world size is {self.world_size}"
            )
        if model.heads % self.tp or model.kv_heads % self.tp:
            raise ParallelError(
                f"tensor parallel degree {self.tp} must divide heads ({model.heads}) and kv_heads ({model.kv_heads})"
            )
        if model.ffn % self.tp:
            raise ParallelError(f"tensor parallel degree {self.tp} must divide ffn ({model.ffn})")
        if model.vocab_size % self.tp:
            raise ParallelError(f"tensor parallel degree {self.tp} must divide the vocabulary ({model.vocab_size})")
        if seq_len is not None and self.tp > 1 and seq_len % self.tp:
            raise ParallelError(f"sequence parallelism needs seq_len ({seq_len}) divisible by tp ({self.tp})")
        stages = self.pp * pp_chunks
        if stages > model.layers:
            raise ParallelError(f"{stages} pipeline stages (pp {self.pp} x chunks {pp_chunks}) exceed {model.layers} layers")
        if pp_chunks > 1 and pp_schedule != "interleaved":
            raise ParallelError(f"parallel.pp_chunks = {pp_chunks} needs parallel.pp_schedule = 'interleaved'")
        if zero in (2, 3) and self.dp_shard == 1 and self.dp_replicate > 1:
            raise ParallelError(f"ZeRO-{zero} shards over dp_shard, which is 1: use --dp-shard (or --zero with --dp)")
        if local_batch is not None and micro_batch is not None and self.pp > 1:
            n_micro = local_batch // micro_batch
            if n_micro < self.pp:
                raise ParallelError(
                    f"pipeline of {self.pp} stages needs at least {self.pp} micro-batches per step; have "
                    f"{local_batch} sequences per rank / micro_batch {micro_batch} = {n_micro}"
                )
            if pp_schedule == "interleaved" and n_micro % self.pp:
                raise ParallelError(f"interleaved 1F1B needs micro-batches ({n_micro}) divisible by pp ({self.pp})")


def build_mesh(dims: ParallelDims, device_type: str):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, tuple(dims.sizes().values()), mesh_dim_names=AXES)


def micro_batch_for(job, local_batch: int, pp: int) -> int:
    """Sequences per micro-batch on one rank. train.micro_batch is an upper bound: a rank with fewer
    sequences runs them in one micro-batch. A pipeline runs parallel.pp_microbatches micro-batches when
    that is set; otherwise train.micro_batch's count if it reaches pp (a pipeline needs at least pp in
    flight), else 2 x pp, or the smallest count from there that divides the rank's sequences."""
    micro = min(job.train.micro_batch, local_batch)
    n = job.parallel.pp_microbatches
    if pp == 1 or (not n and local_batch // micro >= pp):
        return micro
    if not n:
        n = min(2 * pp, local_batch)
        while local_batch % n:
            n += 1
    if local_batch % n:
        raise ParallelError(f"parallel.pp_microbatches = {n} must divide the {local_batch} sequences per rank")
    return local_batch // n


def validate_job_layout(job, world_size: int) -> tuple[ParallelDims, int, int]:
    """Check a job's layout against its model, batch and pipeline split: in the launcher before any
    process starts, and again in every rank. Returns the dims, the sequences per data-parallel rank and
    the micro-batch size (micro_batch_for)."""
    from flopwise.parallel.pipeline import parse_split

    p, cfg = job.parallel, job.model_config()
    dims = ParallelDims(p.dp_replicate, p.dp_shard, p.tp, p.pp, world_size)
    if job.train.global_batch % dims.dp:
        raise ParallelError(
            f"global batch {job.train.global_batch} is not divisible by the data-parallel degree {dims.dp}"
        )
    local_batch = job.train.global_batch // dims.dp
    micro = micro_batch_for(job, local_batch, dims.pp)
    dims.validate(cfg, zero=p.zero, local_batch=local_batch, micro_batch=micro,
                  pp_schedule=p.pp_schedule, pp_chunks=p.pp_chunks, seq_len=job.seq_len)
    if dims.pp > 1:
        parse_split(p.pp_layers, cfg.layers, dims.pp * p.pp_chunks)
    return dims, local_batch, micro
