"""How fast a job progresses on an allocation: the truth the simulator advances jobs with, and the speed
model (`JobModels`, the core's SpeedModel) speed-aware policies decide with. Three kinds:

- trace jobs (`duration_s`): run time at their GPU count; an elastic one scales linearly;
- Pollux artifact jobs (`app`): measured throughput and statistical efficiency (apps.py), epoch by
  epoch, with the artifact's arithmetic (integer seconds at epoch boundaries); an adaptive-batch job
  picks its best batch size at every (re)start and epoch, as Pollux's agent does;
- LLM jobs (`model`, `global_batch`, `tokens`): tokens per second from the planner (speed.py).

Work units: seconds at the requested size, progress, tokens. A job makes no progress for the restart
penalty after each (re)start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flopwise.cluster.apps import BatchConfig, PolluxApp
from flopwise.cluster.spec import ClusterSpec, JobSpec
from flopwise.cluster.speed import PlannerSpeeds, model_config
from flopwise.cluster.state import JobState
from flopwise.errors import ConfigError
from flopwise.hardware import Accelerator, resolve_accelerator

INF = math.inf


@dataclass(slots=True)
class Runtime:
    """The simulated truth of one job: its progress and current allocation."""

    spec: JobSpec
    work: float
    progress: float = 0.0
    epoch: int = 0
    flavor: str | None = None
    shape: tuple[int, ...] = ()  # GPUs per node, in placement order
    resume_at: float = 0.0  # work resumes after the restart penalty
    t: float = 0.0  # progress is known up to this time
    rate: float = 0.0  # constant-rate models: work units per second now
    config: BatchConfig | None = None  # Pollux jobs
    run_progress: float = 0.0  # progress when the current run started
    finished_at: float | None = None

    @property
    def gpus(self) -> int:
        return sum(self.shape)


def packed_shape(gpus: int, per_node: int) -> tuple[int, ...]:
    """GPUs per node of `gpus` packed on nodes of `per_node`."""
    if per_node <= 0:
        return ()
    full, rest = divmod(gpus, per_node)
    return (per_node,) * full + ((rest,) if rest else ())


class JobModel:
    """Base of the three kinds: constant rate between allocation changes."""

    def work(self, spec: JobSpec) -> float:
        raise NotImplementedError

    def rate(self, spec: JobSpec, progress: float, flavor: str, shape: tuple[int, ...]) -> float:
        raise NotImplementedError

    def infeasible(self, spec: JobSpec, flavor: str, gpus: int) -> str | None:
        return None

    def start(self, rt: Runtime, flavor: str | None, shape: tuple[int, ...], now: float, penalty: float) -> None:
        self.advance(rt, now)
        rt.flavor, rt.shape = flavor, tuple(shape)
        rt.resume_at, rt.t, rt.run_progress = now + penalty, now, rt.progress
        rt.rate = self.rate(rt.spec, rt.progress, flavor, rt.shape) if shape else 0.0

    def advance(self, rt: Runtime, t: float) -> None:
        """Progress up to time t (sets finished_at when the work is done by then)."""
        if rt.finished_at is not None or t <= rt.t:
            return
        begin = max(rt.t, rt.resume_at)
        if rt.shape and rt.rate > 0 and t > begin:
            done_at = begin + (rt.work - rt.progress) / rt.rate
            if done_at <= t:
                rt.progress, rt.finished_at = rt.work, done_at
            else:
                rt.progress += rt.rate * (t - begin)
        rt.t = t

    def finish_time(self, rt: Runtime) -> float:
        if rt.finished_at is not None:
            return rt.finished_at
        if not rt.shape or rt.rate <= 0:
            return INF
        return max(rt.t, rt.resume_at) + (rt.work - rt.progress) / rt.rate

    def rollback(self, rt: Runtime, lost_s: float) -> None:
        """Forget the last `lost_s` seconds of work (it was not checkpointed)."""
        if lost_s > 0 and rt.finished_at is None:
            rt.progress = max(rt.run_progress, rt.progress - rt.rate * lost_s)


class TraceModel(JobModel):
    def work(self, spec: JobSpec) -> float:
        if spec.duration_s is None:
            raise ConfigError(f"job {spec.name}: no speed model (give duration_s, app, or model with tokens)")
        return spec.duration_s

    def rate(self, spec: JobSpec, progress: float, flavor: str, shape: tuple[int, ...]) -> float:
        return sum(shape) / spec.gpus if spec.gpus else 1.0  # duration is at `gpus`; elastic: linear


class PolluxModel(JobModel):
    """Epoch by epoch, as the artifact's `Job.step`: within an epoch progress grows at the goodput of the
    current batch configuration; reaching the epoch's end takes round(remaining / goodput) seconds."""

    def __init__(self, apps: dict[str, PolluxApp], round_s: float = 60.0) -> None:
        self.apps = apps
        self.round_s = round_s  # the simulator's round: the artifact advances jobs one round at a time

    def app(self, spec: JobSpec) -> PolluxApp:
        try:
            return self.apps[spec.app]  # type: ignore[index]
        except KeyError:
            raise ConfigError(f"job {spec.name}: unknown application {spec.app!r}; known: {', '.join(self.apps)}") from None

    def work(self, spec: JobSpec) -> float:
        return self.app(spec).work

    def config(self, spec: JobSpec, shape: tuple[int, ...], epoch: int) -> BatchConfig:
        app = self.app(spec)
        if spec.adaptive_batch:
            return app.best_config(shape, epoch)
        return app.fixed_config(sum(shape), spec.global_batch or app.init_batch)

    def rate(self, spec: JobSpec, progress: float, flavor: str, shape: tuple[int, ...]) -> float:
        if not shape:
            return 0.0
        app = self.app(spec)
        epoch = app.epoch_of(progress)
        return app.goodput(shape, self.config(spec, shape, epoch), epoch)

    def start(self, rt: Runtime, flavor: str | None, shape: tuple[int, ...], now: float, penalty: float) -> None:
        self.advance(rt, now)
        rt.flavor, rt.shape = flavor, tuple(shape)
        rt.resume_at, rt.t, rt.run_progress = now + penalty, now, rt.progress
        rt.config = self.config(rt.spec, rt.shape, rt.epoch) if shape else None

    def _run(self, rt: Runtime, seconds: float, start: float) -> tuple[float, int, float | None, BatchConfig | None]:
        """Progress, epoch, finish time and config after working `seconds` from `start` (no mutation).
        Progress is accumulated round by round (`round_s`), in the artifact's order of operations, so
        the floating-point sums, and with them the rounding at epoch ends, are the artifact's."""
        app = self.app(rt.spec)
        progress, epoch, config, now = rt.progress, rt.epoch, rt.config, start
        while seconds > 0:
            chunk = min(seconds, (math.floor(now / self.round_s + 1e-9) + 1) * self.round_s - now)
            seconds -= chunk
            while chunk > 0:
                goodput = app.goodput(rt.shape, config, epoch)
                target = app.progress_at(epoch + 1)
                if progress + goodput * chunk < target:
                    progress += goodput * chunk
                    now += chunk
                    break
                delta = round((target - progress) / goodput)
                epoch += 1
                progress, now, chunk = target, now + delta, chunk - delta
                if epoch >= app.max_epochs:
                    return progress, epoch, now, config
                if rt.spec.adaptive_batch:
                    config = app.best_config(rt.shape, epoch)
        return progress, epoch, None, config

    def advance(self, rt: Runtime, t: float) -> None:
        if rt.finished_at is not None or t <= rt.t:
            return
        begin = max(rt.t, rt.resume_at)
        if rt.shape and t > begin:
            rt.progress, rt.epoch, rt.finished_at, rt.config = self._run(rt, t - begin, begin)
            if rt.finished_at is not None:
                rt.progress = rt.work
        rt.t = t

    def finish_time(self, rt: Runtime) -> float:
        if rt.finished_at is not None:
            return rt.finished_at
        if not rt.shape:
            return INF
        _, _, done, _ = self._run(rt, INF, max(rt.t, rt.resume_at))
        return done if done is not None else INF

    def rollback(self, rt: Runtime, lost_s: float) -> None:
        if lost_s > 0 and rt.finished_at is None and rt.shape:
            app = self.app(rt.spec)
            goodput = app.goodput(rt.shape, rt.config, rt.epoch)
            rt.progress = max(rt.run_progress, rt.progress - goodput * lost_s)
            rt.epoch = app.epoch_of(rt.progress)


class LLMModel(JobModel):
    """Tokens per second from the planner's best layout for the allocation's accelerator and shape."""

    def __init__(self, cluster: ClusterSpec, planner: PlannerSpeeds) -> None:
        self.cluster = cluster
        self.planner = planner
        self._accel: dict[str, Accelerator | None] = {}
        for name, flavor in cluster.flavors.items():  # a catalogue name or an accelerator TOML file
            try:
                self._accel[name] = resolve_accelerator(flavor.accelerator) if flavor.accelerator else None
            except ConfigError as exc:
                raise ConfigError(f"flavor {name}: {exc}") from None

    def accelerator(self, flavor: str) -> Accelerator | None:
        return self._accel.get(flavor)

    def work(self, spec: JobSpec) -> float:
        if not spec.tokens or not spec.global_batch:
            raise ConfigError(f"job {spec.name}: an LLM job needs tokens and global_batch")
        return float(spec.tokens)

    def predict(self, spec: JobSpec, flavor: str, shape: tuple[int, ...]):
        accel = self.accelerator(flavor)
        if accel is None:
            return None
        gpus = sum(shape)
        per_node = shape[0] if len(set(shape)) == 1 else math.gcd(*shape)
        model = model_config(spec.model, spec.model_overrides)  # type: ignore[arg-type]
        bandwidth = self.cluster.flavors[flavor].inter_node_gbps
        return self.planner.speed(model, accel, gpus, per_node, spec.global_batch or 1, bandwidth)

    def rate(self, spec: JobSpec, progress: float, flavor: str, shape: tuple[int, ...]) -> float:
        if not shape:
            return 0.0
        speed = self.predict(spec, flavor, shape)
        return speed.tokens_per_s if speed is not None else 0.0

    def infeasible(self, spec: JobSpec, flavor: str, gpus: int) -> str | None:
        accel = self.accelerator(flavor)
        if accel is None:
            return f"flavor {flavor} names no known accelerator, so the planner cannot size {spec.name}"
        per_node = self.cluster.gpus_per_node(flavor)
        sizes = sorted({spec.min_gpus, spec.gpus, spec.max_gpus})
        why = ""
        for n in sizes:
            speed = self.predict(spec, flavor, packed_shape(n, per_node))
            if speed and speed.tokens_per_s > 0:
                return None
            why = speed.layout if speed else why
        return f"{spec.model} does not run on {sizes[-1]} x {flavor}: {why}"


class JobModels:
    """Picks the model of each job; is the SpeedModel the core's speed-aware policies use."""

    def __init__(self, cluster: ClusterSpec, apps: dict[str, PolluxApp] | None = None,
                 planner: PlannerSpeeds | None = None) -> None:
        self.cluster = cluster
        self.trace = TraceModel()
        self.pollux = PolluxModel(apps or {})
        self.llm = LLMModel(cluster, planner or PlannerSpeeds())
        self._work: dict[str, float] = {}
        self._per_node = {f: cluster.gpus_per_node(f) for f in cluster.flavors}

    def model(self, spec: JobSpec) -> JobModel:
        if spec.app is not None:
            return self.pollux
        if spec.model is not None:
            return self.llm
        return self.trace

    def runtime(self, spec: JobSpec) -> Runtime:
        return Runtime(spec, self.model(spec).work(spec))

    def shape(self, flavor: str, gpus: int) -> tuple[int, ...]:
        return packed_shape(gpus, self._per_node.get(flavor, 0))

    def isolated_time(self, spec: JobSpec) -> float:
        """Run time alone at its requested GPUs on its first allowed flavor, restarts excluded."""
        flavor = spec.flavors[0] if spec.flavors else next(iter(self.cluster.flavors))
        best = INF
        for f in [flavor, *self.cluster.flavors]:  # the first flavor it can run on
            rt = self.runtime(spec)
            model = self.model(spec)
            if model.infeasible(spec, f, spec.gpus):
                continue
            model.start(rt, f, self.shape(f, spec.gpus), 0.0, 0.0)
            best = model.finish_time(rt)
            if best < INF:
                return best
        return best

    # -- SpeedModel ----------------------------------------------------------------------------------------
    def rate(self, job: JobState, flavor: str, gpus: int) -> float:
        return self.model(job.spec).rate(job.spec, job.progress, flavor, self.shape(flavor, gpus))

    def runs_on(self, job: JobState, flavor: str, shape: tuple[int, ...]) -> bool:
        return self.model(job.spec).rate(job.spec, job.progress, flavor, shape) > 0

    def remaining(self, job: JobState) -> float:
        work = self._work.get(job.name)
        if work is None:
            work = self._work[job.name] = self.model(job.spec).work(job.spec)
        return max(0.0, work - job.progress)

    def infeasible(self, spec: JobSpec, flavor: str, gpus: int) -> str | None:
        try:
            self.model(spec).work(spec)
        except ConfigError as exc:
            return str(exc)
        return self.model(spec).infeasible(spec, flavor, gpus)
