"""flopwise.atomic: whole files only, with the permissions a plain write would give."""

import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from flopwise.atomic import atomic_path, atomic_write_text
from flopwise.cluster.service.api import Tokens


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_get_the_usual_permissions(tmp_path, umask_022):
    atomic_write_text(tmp_path / "a.txt", "x")
    # safetensors' save_file replaces the temporary file with a 0600 one; the renamed file must not stay so
    with atomic_path(tmp_path / "w.safetensors") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp))
    assert _mode(tmp_path / "a.txt") == umask_022
    assert _mode(tmp_path / "w.safetensors") == umask_022


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_secret_is_written_with_its_own_mode(tmp_path, umask_022):
    atomic_write_text(tmp_path / "secret", "x", mode=0o600)
    assert _mode(tmp_path / "secret") == 0o600
    Tokens.create(tmp_path / "tokens.toml")  # the service's admin and team tokens
    assert _mode(tmp_path / "tokens.toml") == 0o600
