"""The one vocabulary of a parallel layout, and the one check of a layout against a model and a batch.

The planner (flopwise.plan) searches and costs `Layout`s, the job config's [parallel] section holds the same
fields under the same names, and ParallelDims turns one into a DeviceMesh. Both sides call `check`, so a
layout the planner proposes for flopwise's trainer is one the trainer runs, and the trainer runs every layout the
planner can cost for it (other trainers' profiles relax what their stacks allow: `fewer_microbatches`).

  dp               data-parallel degree: every replica and every shard
  zero             ZeRO stage over the sharded group (Rajbhandari et al. 2020): 1 optimizer state,
                   2 + gradients, 3 + parameters (FSDP2)
  dp_shard         ranks of one ZeRO shard group; 0: all of dp when zero > 0. Below dp: hybrid sharding
                   (shard inside groups of dp_shard, replicate across dp / dp_shard of them)
  tp, sp           tensor-parallel degree (Megatron cuts, vocabulary-parallel embedding and loss) and
                   sequence parallelism on top of it (Korthikanti et al. 2022; ignored when tp = 1)
  pp, vpp          pipeline-parallel degree and model chunks per pipeline rank (interleaved 1F1B when > 1)
  schedule         gpipe | 1f1b | interleaved (Narayanan et al. 2021)
  split            layers per pipeline stage in model order (pp x vpp entries; stage s runs on rank s % pp);
                   None: chosen by the planner's time- and memory-balanced split (flopwise.plan.search)
  micro_batch      sequences per forward/backward on one rank
  recompute        none | selective (the attention core, Korthikanti et al. 2022 section 5, as in Megatron-LM)
                   | op (per-op selective checkpointing, torchtitan's default: each block keeps its input, every
                   second matmul's output and the attention output) | full (whole transformer blocks, keeping only
                   each block's input)
  recompute_every  with full: recompute every k-th block only (global index % k == 0)
  ep               expert-parallel degree: each MoE layer's experts split over groups of ep data-parallel
                   ranks, tokens exchanged with all-to-all (flopwise.parallel.expert); ep divides dp
  cp               context-parallel degree: part of the vocabulary, only 1 is implemented yet

Decisions the check encodes (the trainer and the planner agree on them):
- tp must divide kv_heads: KV heads are split across tensor-parallel ranks, never replicated.
- tp must divide the vocabulary: it is not padded; set model.vocab_size to the next multiple (Megatron pads
  the same way; the extra rows are never targets).
- ZeRO needs a shard group of at least two ranks, and dp_shard > 1 needs zero > 0: no stage runs as a no-op.
- ZeRO-2/3 shard gradients per micro-batch, so they are not combined with pipeline parallelism (zero <= 1).
- A pipeline runs at least one micro-batch per stage (flopwise's trainer; torch.distributed.pipelining's 1F1B);
  Megatron's and DeepSpeed's non-interleaved 1F1B run fewer, all in fill and drain (`fewer_microbatches`, which
  the planner passes for their profiles).
- A pipeline has at most layers + 2 stages (pp x vpp): the first and the last may hold no transformer layer, only
  the embedding and only the head (Megatron-Core's account_for_embedding/loss_in_pipeline_split); every other
  stage holds at least one.
- ep reuses data-parallel ranks (it adds none): ep must divide dp and the experts. It combines with pp, with
  ZeRO 1-3 (expert weights, already split by ep, stay out of the dense model's FSDP and dp_shard partition;
  the ZeRO stage applies to them over the dp / ep ranks holding the same experts) and with tp and
  sp: the MoE layer's TP cut is Megatron's expert tensor parallelism (router replicated, each expert's
  w1/w3 column- and w2 row-parallel; flopwise.parallel.tensor), so tp must divide ffn as for a dense model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from flopwise.config_values import check_number, parse_bool
from flopwise.errors import ConfigError, LayoutError
from flopwise.flops import RECOMPUTE_MODES
from flopwise.models.config import ModelConfig

SCHEDULES = ("gpipe", "1f1b", "interleaved")
DEGREES = ("dp", "tp", "pp", "vpp", "micro_batch", "recompute_every", "ep", "cp")


@dataclass(frozen=True)
class Layout:
    dp: int = 1
    zero: int = 0
    dp_shard: int = 0
    tp: int = 1
    sp: bool = True
    pp: int = 1
    vpp: int = 1
    schedule: str = "1f1b"
    split: tuple[int, ...] | None = None
    micro_batch: int = 1
    recompute: str = "none"
    recompute_every: int = 1
    ep: int = 1
    cp: int = 1
    # expert tensor parallelism when it differs from tp (Megatron's MoE parallel folding: etp 1 under tp 2 keeps each
    # expert whole and lets the ep group span the attention's TP ranks); 0: tp, the experts cut like a dense MLP
    etp: int = 0

    def __post_init__(self) -> None:
        for key in DEGREES:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LayoutError(f"{key} = {value!r}: must be a positive integer", (key,))
        if self.zero not in (0, 1, 2, 3) or isinstance(self.zero, bool):
            raise LayoutError(f"zero = {self.zero!r}: must be 0, 1, 2 or 3", ("zero",))
        if not isinstance(self.dp_shard, int) or isinstance(self.dp_shard, bool) or self.dp_shard < 0:
            raise LayoutError(f"dp_shard = {self.dp_shard!r}: must be 0 (all of dp) or a positive integer", ("dp_shard",))
        if self.recompute not in RECOMPUTE_MODES:
            raise LayoutError(f"recompute = {self.recompute!r}: must be one of {', '.join(RECOMPUTE_MODES)}",
                              ("recompute",))
        if self.schedule not in SCHEDULES:
            raise LayoutError(f"schedule = {self.schedule!r}: must be one of {', '.join(SCHEDULES)}", ("schedule",))
        # one spelling per layout: no sequence parallelism without TP, interleaving is the schedule of vpp > 1
        if self.tp == 1 and self.sp:
            object.__setattr__(self, "sp", False)
        if not isinstance(self.etp, int) or isinstance(self.etp, bool) or self.etp < 0:
            raise LayoutError(f"etp = {self.etp!r}: must be 0 (= tp) or a positive integer", ("etp",))
        if self.etp == self.tp:
            object.__setattr__(self, "etp", 0)
        if self.vpp > 1 and self.schedule == "1f1b":
            object.__setattr__(self, "schedule", "interleaved")
        if self.split is not None:
            object.__setattr__(self, "split", tuple(int(n) for n in self.split))

    # ---- derived degrees ------------------------------------------------------------------------
    @property
    def gpus(self) -> int:
        """Ranks the layout needs (expert parallelism reuses data-parallel ranks)."""
        return self.tp * self.pp * self.dp * self.cp

    @property
    def expert_tp(self) -> int:
        """The tensor-parallel degree that cuts each expert (etp, else tp)."""
        return self.etp or self.tp

    @property
    def expert_dp(self) -> int:
        """Ranks of a pipeline stage holding the same experts (Megatron's expert data parallelism): its tp x cp x dp
        ranks folded into ep x etp x this; with etp = tp, the dp x cp / ep ranks ep consecutive ones apart."""
        return self.tp * self.cp * self.dp // (self.ep * self.expert_tp)

    @property
    def shard_degree(self) -> int:
        """Ranks that split ZeRO state among themselves (1: nothing sharded)."""
        if self.zero == 0:
            return self.dp_shard or 1
        return self.dp_shard or self.dp

    @property
    def stages(self) -> int:
        """Pipeline stages in the model: pp ranks x vpp chunks each."""
        return self.pp * self.vpp

    def rank_layers(self, split: tuple[int, ...]) -> tuple[int, ...]:
        """Layers each pipeline rank holds: the sum of its chunks (stage s runs on rank s % pp)."""
        return tuple(sum(split[r :: self.pp]) for r in range(self.pp))

    def rank_leading_layers(self, split: tuple[int, ...], first: int) -> tuple[int, ...]:
        """How many of the model's `first` layers each pipeline rank holds (they fill the first chunks)."""
        out, start = [0] * self.pp, 0
        for chunk, n in enumerate(split):
            out[chunk % self.pp] += max(0, min(start + n, first) - start)
            start += n
        return tuple(out)

    # ---- spelling -------------------------------------------------------------------------------
    def replace(self, **changes) -> Layout:
        return dataclasses.replace(self, **changes)

    def short(self) -> str:
        """One line for tables and logs: tp=8,pp=16,dp=8,zero=1,sp=1,rc=full,mb=1."""
        parts = [f"tp={self.tp}", f"pp={self.pp}", f"dp={self.dp}"]
        if self.vpp > 1:
            parts.append(f"vpp={self.vpp}")
        parts.append(f"zero={self.zero}")
        if self.zero and self.shard_degree != self.dp:
            parts.append(f"dp_shard={self.shard_degree}")
        parts += [f"sp={int(self.sp)}", f"rc={self.recompute}"]
        if self.recompute_every > 1:
            parts.append(f"every={self.recompute_every}")
        parts.append(f"mb={self.micro_batch}")
        if self.schedule == "gpipe":
            parts.append("gpipe")
        parts += [f"{k}={getattr(self, k)}" for k in ("ep", "cp") if getattr(self, k) > 1]
        if self.etp:  # (0: tp)
            parts.append(f"etp={self.etp}")
        return ",".join(parts)

    def describe(self) -> str:
        """Compact label for a run: pp2xdp2xtp2-zero1, or single."""
        axes = [f"{k}{getattr(self, k)}" for k in ("pp", "dp", "ep", "cp", "tp") if getattr(self, k) > 1]
        label = "x".join(axes) or "single"
        if self.zero:
            label += f"-zero{self.zero}" + (f"-shard{self.shard_degree}" if self.shard_degree != self.dp else "")
        return label

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["split"] = list(self.split) if self.split is not None else None
        return d

    @classmethod
    def from_dict(cls, data: dict) -> Layout:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "split" and v is not None else v) for k, v in data.items() if k in known})


def local_batch(global_batch: int, dp: int) -> int:
    """Sequences per data-parallel rank per step."""
    if global_batch % dp:
        raise LayoutError(f"global batch {global_batch} is not divisible by the data-parallel degree {dp}",
                          ("global_batch", "dp"))
    return global_batch // dp


def parse_split(text: str, layers: int, stages: int) -> tuple[int, ...] | None:
    """'auto' -> None; '2,2,3,3' -> (2, 2, 3, 3), checked against the layer and stage counts."""
    if text.strip() == "auto":
        return None
    try:
        split = tuple(int(x) for x in text.replace("/", ",").split(","))
    except ValueError:
        raise LayoutError(f"split = {text!r}: expected 'auto' or comma-separated integers", ("split",)) from None
    check_split(split, layers, stages)
    return split


def max_stages(layers: int) -> int:
    """Pipeline stages (pp x vpp) a model of `layers` blocks can run on: the first and the last may hold only the
    embedding and only the LM head (Megatron's account_for_embedding_in_pipeline_split /
    account_for_loss_in_pipeline_split: Llama 3.1 405B's 126 layers on pp 16 x vpp 8 = 128 stages); every other stage
    needs a layer (check_split)."""
    return layers + 2


def check_split(split: tuple[int, ...], layers: int, stages: int) -> None:
    text = ",".join(map(str, split))
    if len(split) != stages:
        raise LayoutError(f"split {text} gives {len(split)} stages, the layout has {stages} (pp x vpp)",
                          ("split", "pp", "vpp"))
    if any(n < 1 for n in split[1:-1]) or min(split) < 0:
        raise LayoutError(f"split {text}: every stage but the first and the last needs at least one layer (those two "
                          "may hold only the embedding or only the LM head)", ("split",))
    if sum(split) != layers:
        raise LayoutError(f"split {text} sums to {sum(split)} layers; the model has {layers}", ("split", "layers"))


def check_implemented(layout: Layout) -> None:
    """Degrees the vocabulary names but the trainer does not run yet: the planner may not propose them."""
    if layout.cp > 1:
        raise LayoutError(f"cp = {layout.cp}: context parallelism is not implemented yet (use cp = 1)", ("cp",))
    if layout.etp:
        raise LayoutError(f"etp = {layout.etp}: flopwise's trainer cuts experts by tp (expert tensor parallelism other "
                          "than tp is costed for other stacks' runs, e.g. --software te)", ("etp",))


def check_experts(layout: Layout, model: ModelConfig) -> None:
    """Expert parallelism against the model and the other degrees (tp cuts the experts like a dense MLP,
    checked with it: tp divides ffn; or etp, a divisor of tp, under Megatron's MoE parallel folding)."""
    ep, experts = layout.ep, model.experts
    if layout.etp and not experts:
        raise LayoutError(f"etp = {layout.etp} cuts experts; this model is dense", ("etp", "experts"))
    if layout.etp and layout.tp % layout.etp:
        raise LayoutError(f"etp = {layout.etp} must divide tp = {layout.tp}", ("etp", "tp"))
    if ep == 1:
        return
    if not experts:
        raise LayoutError(f"ep = {ep} needs a mixture-of-experts model (model.experts > 0); this one is dense",
                          ("ep", "experts"))
    if experts % ep:
        raise LayoutError(f"expert parallel degree {ep} must divide the experts ({experts})", ("ep", "experts"))
    if layout.etp:  # Megatron's folding: the tp x dp ranks regrouped into ep x etp x expert-data-parallel
        if (layout.tp * layout.cp * layout.dp) % (ep * layout.etp):
            raise LayoutError(f"ep x etp = {ep} x {layout.etp} must divide tp x cp x dp = {layout.tp} x {layout.cp} x "
                              f"{layout.dp}: the expert groups fold the attention's ranks", ("ep", "etp", "tp", "dp"))
        return
    if layout.dp % ep:
        raise LayoutError(
            f"expert parallel degree {ep} must divide dp = {layout.dp}: ep groups are made of data-parallel ranks",
            ("ep", "dp"))


def check(layout: Layout, model: ModelConfig, global_batch: int, seq_len: int | None = None,
          world: int | None = None, fewer_microbatches: bool = False) -> int:
    """Raise LayoutError naming the first broken constraint and its numbers; return the micro-batches each
    rank runs per step. `world`: the ranks available (None: not checked). `fewer_microbatches`: the schedule runs
    fewer micro-batches than stages (another trainer's 1F1B, Software.fewer_microbatches_than_stages; flopwise's own
    trainer asks for one per stage at least)."""
    check_implemented(layout)
    tp, pp, dp, vpp = layout.tp, layout.pp, layout.dp, layout.vpp
    if world is not None and layout.gpus != world:
        raise LayoutError(
            f"pp x dp x tp = {pp} x {dp} x {tp} = {layout.gpus}, but the world size is {world}",
            ("pp", "dp", "tp", "world"))
    if model.heads % tp or model.kv_heads % tp:
        raise LayoutError(
            f"tensor parallel degree {tp} must divide heads ({model.heads}) and kv_heads ({model.kv_heads}); "
            "KV heads are split across TP ranks, not replicated", ("tp", "heads", "kv_heads"))
    if model.ffn % tp:
        raise LayoutError(f"tensor parallel degree {tp} must divide ffn ({model.ffn})", ("tp", "ffn"))
    if model.shared_ffn % tp:
        raise LayoutError(f"tensor parallel degree {tp} must divide the shared expert's width (shared_ffn = "
                          f"{model.shared_ffn})", ("tp", "shared_ffn"))
    if model.dense_ffn % tp:
        raise LayoutError(f"tensor parallel degree {tp} must divide the leading dense blocks' width (dense_ffn = "
                          f"{model.dense_ffn})", ("tp", "dense_ffn"))
    if model.vocab_size % tp:
        padded = -(-model.vocab_size // tp) * tp
        raise LayoutError(
            f"tensor parallel degree {tp} must divide the vocabulary ({model.vocab_size}); pad it: "
            f"model.vocab_size = {padded}", ("tp", "vocab_size"))
    seq = seq_len or model.seq_len
    if layout.sp and seq % tp:
        raise LayoutError(f"sequence parallelism needs seq_len ({seq}) divisible by tp ({tp})", ("sp", "seq_len", "tp"))
    if layout.stages > max_stages(model.layers):
        raise LayoutError(
            f"{layout.stages} pipeline stages (pp {pp} x vpp {vpp}) exceed {model.layers} layers plus one stage "
            "for the embedding and one for the LM head", ("pp", "vpp", "layers"))
    if vpp > 1 and pp == 1:
        raise LayoutError(f"vpp = {vpp} needs pp > 1 (model chunks are interleaved over pipeline ranks)", ("vpp", "pp"))
    if vpp > 1 and layout.schedule != "interleaved":
        raise LayoutError(f"vpp = {vpp} runs the interleaved schedule, not {layout.schedule!r}", ("vpp", "schedule"))
    if layout.schedule == "interleaved" and vpp == 1:
        raise LayoutError("schedule = 'interleaved' needs vpp > 1 model chunks per rank; use 1f1b for one",
                          ("schedule", "vpp"))
    if layout.split is not None:
        check_split(layout.split, model.layers, layout.stages)
    shard = layout.shard_degree
    if dp % shard:
        raise LayoutError(f"dp_shard = {layout.dp_shard} must divide dp = {dp}", ("dp_shard", "dp"))
    if layout.zero and shard == 1:
        raise LayoutError(
            f"zero = {layout.zero} shards over data-parallel ranks, but its shard group has one rank "
            f"(dp = {dp}, dp_shard = {layout.dp_shard}): use dp > 1 or zero = 0", ("zero", "dp", "dp_shard"))
    if not layout.zero and shard > 1:
        raise LayoutError(f"dp_shard = {layout.dp_shard} shards nothing with zero = 0: set zero or dp_shard = 0",
                          ("dp_shard", "zero"))
    if layout.zero >= 2 and pp > 1:
        raise LayoutError(
            f"zero = {layout.zero} shards gradients per micro-batch; with pipeline parallelism use zero <= 1",
            ("zero", "pp"))
    check_experts(layout, model)
    if layout.recompute == "op" and model.experts:
        raise LayoutError("recompute = 'op' (per-op checkpointing) is for dense blocks: use selective or full with "
                          "experts", ("recompute", "experts"))
    if layout.recompute_every > 1 and layout.recompute != "full":
        raise LayoutError(
            f"recompute_every = {layout.recompute_every} applies to recompute = 'full' (whole blocks), "
            f"not {layout.recompute!r}", ("recompute_every", "recompute"))
    local = local_batch(global_batch, dp)
    if local % layout.micro_batch:
        raise LayoutError(
            f"{local} sequences per data-parallel rank (global batch {global_batch} / dp {dp}) are not "
            f"divisible by micro_batch {layout.micro_batch}", ("global_batch", "dp", "micro_batch"))
    m = local // layout.micro_batch
    if pp > 1 and m < pp and not (fewer_microbatches and vpp == 1):
        why = ("the interleaved schedule does (a non-interleaved 1F1B runs fewer)" if fewer_microbatches else
               "this trainer's schedule does (Megatron's and DeepSpeed's profiles plan fewer)")
        raise LayoutError(
            f"pipeline of {pp} stages needs at least {pp} micro-batches per step: {why}; have {local} sequences "
            f"per rank / micro_batch {layout.micro_batch} = {m}", ("pp", "global_batch", "dp", "micro_batch"))
    if vpp > 1 and m % pp:
        raise LayoutError(f"interleaved 1F1B needs micro-batches ({m}) divisible by pp ({pp})",
                          ("global_batch", "dp", "micro_batch", "pp"))
    return m


# `key=value` spellings of the fields (planner --layout, published-run CSV columns): name -> type
KEYS = {
    "dp": int, "zero": int, "dp_shard": int, "tp": int, "sp": bool, "pp": int, "vpp": int, "schedule": str,
    "split": tuple, "micro_batch": int, "recompute": str, "recompute_every": int, "ep": int, "cp": int, "etp": int,
}
# short forms, Layout.short()'s among them, so a printed layout reads back
ALIASES = {"mb": "micro_batch", "sequence_parallel": "sp", "rc": "recompute", "pp_layers": "split",
           "chunks": "vpp", "every": "recompute_every"}


def parse_value(key: str, value: str):
    """One `key=value` item of a layout, typed; raises LayoutError naming an unknown key or a bad value."""
    name = ALIASES.get(key, key)
    if name not in KEYS:
        raise LayoutError(f"layout key {key!r}: must be one of {', '.join([*KEYS, *ALIASES])}")
    kind = KEYS[name]
    try:
        if kind is int:
            number = int(value)
            low, high = {"zero": (0, 3), "dp_shard": (0, None)}.get(name, (1, None))
            return name, check_number(f"layout {key}", number, low=low, high=high, integer=True)
        if kind is bool:
            return name, parse_bool(key, value)
        if kind is tuple:
            parts = tuple(int(v) for v in value.replace("/", " ").replace(";", " ").split())
            for part in parts:  # which stages may hold none (the ends) is check_split's, against the stage count
                check_number(f"layout {key} = {value!r}: each stage's layers", part, low=0, integer=True)
            return name, parts
    except ValueError:
        raise LayoutError(f"layout {key} = {value!r}: not a valid {kind.__name__}") from None
    except ConfigError as exc:
        raise LayoutError(str(exc)) from None
    return name, value


def parse_layout(text: str) -> dict:
    """'tp=8,pp=16,recompute=full,split=2/3/3/2' -> the fixed fields (the planner searches the rest)."""
    fixed: dict = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        if item in SCHEDULES:  # Layout.short() prints a non-default schedule by its name alone
            item = f"schedule={item}"
        if "=" not in item:
            raise LayoutError(f"layout item {item!r}: expected key=value (keys: {', '.join(KEYS)})")
        key, value = (x.strip() for x in item.split("=", 1))
        name, typed = parse_value(key, value)
        fixed[name] = typed
    return fixed
