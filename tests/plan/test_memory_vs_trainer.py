"""The planner's per-rank memory against the trainer's engines, measured on CPU (within 25%)."""

import json
import os
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from flopwise.data.loader import TokenLoader
from flopwise.data.shards import TokenShards
from flopwise.hardware import cpu_accelerator
from flopwise.layout import Layout
from flopwise.plan.cost import CostModel
from flopwise.plan.spec import Cluster, Training
from flopwise.train.config import load_config
from flopwise.train.engine import build_engine
from flopwise.train.memory_probe import measure_step_memory

SETS = ["model.layers=4", "train.global_batch=8", "train.micro_batch=2", "guard.enabled=false"]


def _job(shards, overrides, out):
    return load_config(None, [f'data.shards="{shards}"', *SETS, *overrides], preset="nano", out=str(out))


def _measure(job, shards):
    engine = build_engine(job)
    loader = TokenLoader(TokenShards(shards), job.seq_len, job.train.global_batch, 0, engine.data_rank, engine.data_world)
    return measure_step_memory(engine, *loader.next_batch())


def _worker(rank, world, port, shards, overrides, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    Path(out, f"rank{rank}.json").write_text(json.dumps(_measure(_job(shards, overrides, out), shards)))


def _planned(job, layout: Layout, stage: int, layers: int) -> tuple[float, float]:
    cfg = job.model_config()
    cm = CostModel(cfg, Cluster(cpu_accelerator(), layout.gpus, layout.gpus), Training(8, precision="fp32"))
    m = cm.stage_memory(layout, stage, layers, cm.check(layout))
    return m["params"] + m["grads"] + m["optimizer"], m["activations"] + m["logits"]


CASES = {
    "single": (1, [], Layout(micro_batch=2)),
    "op-checkpointing": (1, ['parallel.recompute="op"'], Layout(micro_batch=2, recompute="op")),
    "zero1-dp2": (2, ["parallel.dp=2", "parallel.zero=1"], Layout(dp=2, zero=1, micro_batch=2)),
    "tp2-sp": (2, ["parallel.tp=2"], Layout(tp=2, sp=True, micro_batch=2)),
    "pp2-1f1b": (2, ["parallel.pp=2", 'parallel.split="2,2"'], Layout(pp=2, micro_batch=2, split=(2, 2))),
}


@pytest.mark.distributed
@pytest.mark.parametrize("name", list(CASES))
def test_planner_memory_matches_the_trainer(nano_shards, tmp_path, name):
    from tests.ports import free_port

    world, overrides, layout = CASES[name]
    job = _job(nano_shards, overrides, tmp_path)
    if world == 1:
        measured = [_measure(job, nano_shards)]
    else:
        mp.start_processes(_worker, args=(world, free_port(), str(nano_shards), overrides, str(tmp_path)), nprocs=world,
                           join=True, start_method="spawn")
        measured = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    for rank, got in enumerate(measured):
        stage = rank if layout.pp > 1 else 0
        layers = layout.split[stage] if layout.split else job.model_config().layers
        states, acts = _planned(job, layout, stage, layers)
        assert states == pytest.approx(got["model_state_bytes"], rel=0.25), (rank, states, got)
        assert acts == pytest.approx(got["activation_peak_bytes"], rel=0.25), (rank, acts, got)
