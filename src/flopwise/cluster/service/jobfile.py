"""A job file: the scheduler's JobSpec fields (flopwise.cluster.spec) plus what the service runs.

    id = "lm-sweep-3"          # optional: a client-supplied id; submitting it again creates nothing new
    name = "tiny on stdlib"    # shown in lists (default: the id)
    kind = "train"             # train: `flopwise train`; data: `flopwise data run`; command: argv as given
    queue = "default"          # a local queue of the cluster
    priority = 0
    gpus = 1                   # GPUs (CPU slots on a machine without GPUs)
    preemptible = true
    max_restarts = 3
    config = "run.toml"        # train/data: the flopwise config (relative to the job file; the CLI sends it absolute)
    args = ["--steps", "50"]   # train/data: more arguments for the command
    data = "pipeline.toml"     # optional: a data pipeline, prepared once per node into its content-addressed cache
                               # before the job runs (train: its data.shards; any job: FLOPWISE_DATA_SHARDS)
    argv = ["python", "-c", "print(1)"]   # command: run as an argument list, never through a shell

Jobs run in their own directory under the service's home (`out/`, `log.txt`); `workdir` (the directory the
job was submitted from, set by the CLI) is the working directory of the process.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path

from flopwise.cluster.spec import JobSpec
from flopwise.errors import ConfigError

RUNNABLE = ("train", "data", "command")
SERVICE_KEYS = ("id", "name", "argv", "args", "workdir", "config", "data")
SPEC_KEYS = tuple(f.name for f in dataclasses.fields(JobSpec) if f.name not in ("name", "submit_time", "config"))
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass(frozen=True)
class JobRequest:
    id: str
    name: str
    team: str
    spec: JobSpec  # spec.name == id
    argv: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    config: str | None = None
    workdir: str | None = None
    data: str | None = None  # a data pipeline TOML
    data_key: str | None = None  # its cache key (set by the service when the job is submitted)

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "team": self.team, "spec": self.spec.to_dict(),
                "argv": list(self.argv), "args": list(self.args), "config": self.config, "workdir": self.workdir,
                "data": self.data, "data_key": self.data_key}

    @classmethod
    def from_dict(cls, data: dict) -> JobRequest:
        return cls(data["id"], data["name"], data["team"], JobSpec.from_dict(data["spec"]), tuple(data["argv"]),
                   tuple(data["args"]), data.get("config"), data.get("workdir"), data.get("data"), data.get("data_key"))


def _strings(where: str, value) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} = {value!r}: must be a list of strings")
    return tuple(value)


def parse_job(text: str, team: str, source: str = "job") -> JobRequest:
    """A job file's text -> JobRequest; any wrong key or value raises ConfigError naming it."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return job_from_table(data, team, source)


def job_from_table(data: dict, team: str, source: str = "job") -> JobRequest:
    allowed = set(SERVICE_KEYS) | set(SPEC_KEYS)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    job_id = data.get("id")
    if job_id is None:
        job_id = f"{team}-{uuid.uuid4().hex[:10]}"
    elif not isinstance(job_id, str) or not _ID.match(job_id):
        raise ConfigError(f"{source}: id = {job_id!r}: must be 1-96 letters, digits, '.', '_' or '-' "
                          "(starting with a letter or digit)")
    name = data.get("name", job_id)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{source}: name = {name!r}: must be a non-empty string")
    kind = data.get("kind", "command")
    if kind not in RUNNABLE:
        raise ConfigError(f"{source}: kind = {kind!r}: the service runs {', '.join(RUNNABLE)}")
    argv = _strings(f"{source}: argv", data["argv"]) if "argv" in data else ()
    args = _strings(f"{source}: args", data["args"]) if "args" in data else ()
    if kind == "command" and not argv:
        raise ConfigError(f"{source}: kind = 'command' needs argv, a non-empty list of strings")
    if kind != "command" and argv:
        raise ConfigError(f"{source}: argv is for kind = 'command'; a {kind} job takes config and args")
    config = data.get("config")
    if config is not None and (not isinstance(config, str) or not config):
        raise ConfigError(f"{source}: config = {config!r}: must be a path to a TOML file")
    if kind == "data" and config is None:
        raise ConfigError(f"{source}: kind = 'data' needs config, the pipeline TOML to run")
    pipeline = data.get("data")
    if pipeline is not None and (not isinstance(pipeline, str) or not pipeline):
        raise ConfigError(f"{source}: data = {pipeline!r}: must be a path to a data pipeline TOML")
    workdir = data.get("workdir")
    if workdir is not None and (not isinstance(workdir, str) or not Path(workdir).is_absolute()):
        raise ConfigError(f"{source}: workdir = {workdir!r}: must be an absolute path")
    table = {k: v for k, v in data.items() if k in SPEC_KEYS}
    spec = JobSpec.from_dict({**table, "name": job_id, "kind": kind, "config": config})
    return JobRequest(job_id, name, team, spec, argv, args, config, workdir, pipeline)


def resolve_paths(data: dict, base: Path, cwd: Path) -> dict:
    """What the CLI does before sending a job file: `config` absolute (relative to the job file), `workdir` the
    directory it is submitted from."""
    data = dict(data)
    for key in ("config", "data"):
        if isinstance(data.get(key), str):
            data[key] = str((base / data[key]).resolve())
    data.setdefault("workdir", str(cwd.resolve()))
    return data
