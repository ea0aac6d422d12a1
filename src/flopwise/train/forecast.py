"""What the planner predicts for this run, from the planner's own functions (flopwise.plan): the pipeline
split of `split = "auto"`, the memory table printed at start-up, and the step time and memory set beside the
measured ones when the run ends (a `plan_vs_measured` record in metrics.jsonl, which `flopwise plan
calibrate` reads back to fit the device constants to this machine)."""

from __future__ import annotations

import dataclasses
import logging

from flopwise.errors import FlopwiseError
from flopwise.hardware import Accelerator
from flopwise.layout import Layout
from flopwise.plan import memory as mem
from flopwise.plan.cost import CostModel, Plan, even_split
from flopwise.plan.search import best_split
from flopwise.plan.spec import Cluster, Training
from flopwise.train.config import JobConfig

log = logging.getLogger(__name__)


def cost_model(job: JobConfig, accelerator: Accelerator, world: int, gpus_per_node: int,
               precision: str) -> CostModel | None:
    """The planner's model of this run; None for a device without a known peak (nothing to predict from)."""
    if accelerator.peak_flops <= 0:
        return None
    cluster = Cluster(accelerator, world, gpus_per_node if world % gpus_per_node == 0 else world)
    training = Training(job.train.global_batch, precision=precision, seq_len=job.seq_len, software="flopwise",
                        compiled=job.train.compile)
    return CostModel(job.model_config(), cluster, training)


def choose_split(cm: CostModel | None, layout: Layout, layers: int) -> tuple[int, ...]:
    """The layout's split, or for `auto` the one the planner's search would choose (as even as possible
    where nothing can be costed)."""
    if layout.split is not None:
        return layout.split
    if cm is not None:
        try:
            return best_split(cm, layout)
        except FlopwiseError as exc:
            log.warning("the planner cannot cost this layout (%s); splitting the layers evenly", exc)
    return even_split(layers, layout.stages)


def forecast(cm: CostModel | None, layout: Layout) -> Plan | None:
    """The planner's plan for this exact layout; None when it cannot cost it (the run goes on without)."""
    if cm is None:
        return None
    try:
        return cm.evaluate(layout)
    except FlopwiseError as exc:
        log.warning("no prediction for this run: %s", exc)
        return None


def stage_table(plan: Plan) -> list[dict]:
    """Per pipeline rank: layers, micro-batches in flight and the planner's memory (bytes) by part."""
    layout, rows = plan.layout, []
    for i, (layers, parts) in enumerate(zip(plan.pp_layers, plan.memory, strict=True)):
        rows.append({"stage": i, "layers": layers, "in_flight": mem.in_flight(layout, i, plan.microbatches),
                     **parts})
    return rows


def tensor_bytes(stage: dict, transients: bool = True) -> float:
    """What a stage's tensors take: the planner's total without the framework's reserve (CUDA context and
    workspaces), comparable with the allocator's peak on a GPU or the growth of peak RSS on a CPU. Without
    `transients`, also without what lives only inside the backward (the eager loss's gradients, the layer being
    recomputed), for a measurement of saved tensors (train/memory_probe.py)."""
    backward_only = stage.get("loss_backward", 0.0) + stage.get("recompute_layer", 0.0)
    return mem.tensor_bytes(stage["total"]) - (0.0 if transients else backward_only)


def comparison(cm: CostModel, plan: Plan, measured_step_s: float, clock: str, measured_memory: float,
               memory_label: str, steps_timed: int, transients: bool = True) -> dict:
    """The `plan_vs_measured` record: prediction, measurement and everything needed to predict again.
    `clock` is how the step was timed ("wall", or "cpu": CPU time per thread, which sees no pipeline bubble,
    so the prediction it is set beside leaves the bubble out: Plan.busy_time); `transients`, whether the memory
    measured sees tensors that live only inside a kernel (an allocator's peak does; saved tensors do not)."""
    predicted_memory = tensor_bytes(plan.memory[0], transients)
    predicted = plan.busy_time if clock == "cpu" else plan.step_time
    acc = cm.cluster.accelerator
    return {
        "event": "plan_vs_measured",
        "predicted_step_s": predicted,
        "measured_step_s": measured_step_s,
        "step_clock": clock,
        "step_time_error": predicted / measured_step_s - 1.0 if measured_step_s > 0 else None,
        "predicted_memory_bytes": predicted_memory,
        "measured_memory_bytes": measured_memory,
        "memory_label": memory_label,
        "memory_error": predicted_memory / measured_memory - 1.0 if measured_memory > 0 else None,
        "steps_timed": steps_timed,
        "breakdown_s": dict(plan.breakdown),
        "inputs": {
            "model": cm.model.to_dict(),
            "layout": plan.layout.to_dict(),
            "training": dataclasses.asdict(cm.training),
            "cluster": {"gpus": cm.cluster.gpus, "gpus_per_node": cm.cluster.gpus_per_node,
                        "intra_node_bw": cm.cluster.intra_node_bw, "inter_node_bw": cm.cluster.inter_node_bw},
            "accelerator": dataclasses.asdict(acc),
        },
    }
