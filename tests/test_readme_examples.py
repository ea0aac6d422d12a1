"""The README's shell examples run as written.

Every command in a ```bash block of README.md is extracted (continuation lines joined, comments dropped) and
either run, in-process through `flopwise.cli.main`, in a temporary copy of the repository (README, examples,
src; `../shared` beside it when the checkout has one; the data cache in the temporary folder), or skipped
with its reason: servers and clients of a server, GPUs and clusters, training and other runs of minutes
(they have tests of their own). A new README command is run by default, so a broken one fails here.
"""

from __future__ import annotations

import glob
import re
import shlex
import shutil
import time
from pathlib import Path

import pytest

from tests.cli_run import run_cli

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# (pattern on the command, reason): the first match decides; everything else runs
SKIPPED = [
    (r"^make\b", "set-up and the whole suite: minutes"),
    (r"^(torchrun|srun|head=|#SBATCH)", "several nodes"),
    (r"^curl\b", "a client of a running server"),
    (r"\bserve\b", "starts a server"),
    (r"\bflopwise (train|generate|export)\b", "training or a trained checkpoint: minutes (tests/train, tests/serve)"),
    (r"\bpytest\b", "the test suite itself"),
    (r"--ray\b", "needs Ray"),
    (r"\bplan calibrate\b", "needs finished training runs"),
    (r"--gpu (cpu|my-cpu\.toml)", "measures this machine's peak (seconds of matmuls) or needs calibrated runs"),
    (r"philly|openb", "a trace replay of 30 s or more (benchmarks/scheduler.py)"),
    (r"--device cuda\b", "needs a GPU"),
    (r"^jq\b", "needs jq"),
    (r"\bcluster (up|submit|queue|ls|logs|show|nodes|usage|cancel)\b",
     "the live cluster service and its clients (tests/cluster/service)"),
    (r"^(\.venv/bin/)?python3? benchmarks/", "a benchmark: minutes (results in benchmarks/RESULTS.md)"),
]


def readme_commands() -> list[str]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def skip_reason(command: str) -> str | None:
    return next((reason for pattern, reason in SKIPPED if re.search(pattern, command)), None)


def argv_of(command: str) -> list[str]:
    """The arguments after `flopwise` (comments dropped, optional [..] parts of a usage line removed, globs
    expanded as a shell would)."""
    words = shlex.split(re.sub(r"\s\[[^\]]*\]", "", command), comments=True)
    assert words[0].endswith("flopwise"), command
    out = []
    for w in words[1:]:
        out += sorted(glob.glob(w)) or [w] if any(c in w for c in "*?") else [w]
    return out


COMMANDS = readme_commands()


def test_the_readme_has_runnable_examples():
    runnable = [c for c in COMMANDS if skip_reason(c) is None]
    assert len(COMMANDS) > 30 and len(runnable) >= 8


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    repo = root / "repo"
    repo.mkdir()
    shutil.copy(REPO / "README.md", repo / "README.md")
    for folder in ("examples", "src", "benchmarks"):
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.png", "results")
        shutil.copytree(REPO / folder, repo / folder, ignore=ignore)
    if SHARED.is_dir():
        (root / "shared").symlink_to(SHARED)
    return repo


SLOW = r"\bdata run\b|\bcluster simulate\b"  # 7-15 s each on a shared 2-core machine


@pytest.mark.parametrize(
    "command",
    [pytest.param(c, marks=pytest.mark.slow) if re.search(SLOW, c) else c for c in COMMANDS if skip_reason(c) is None],
)
def test_readme_command_runs(command, sandbox, monkeypatch, capsys):
    if "../shared" in command and not SHARED.is_dir():
        pytest.skip("needs ../shared beside the checkout")
    monkeypatch.chdir(sandbox)
    monkeypatch.setenv("FLOPWISE_CACHE", str(sandbox.parent / "cache"))
    start = time.monotonic()
    code, out, err = run_cli(capsys, *argv_of(command))
    assert code == 0, f"{command}\n{err[-2000:]}"
    assert "Traceback" not in out + err
    print(f"{time.monotonic() - start:.1f} s: {command}")


@pytest.mark.parametrize("command", [c for c in COMMANDS if skip_reason(c) is not None])
def test_readme_command_skipped(command):
    pytest.skip(skip_reason(command))
