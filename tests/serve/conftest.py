"""Serving fixtures: tiny random-weight checkpoints (LFA and its Llama twin) with a BPE tokenizer trained on
a few standard-library files, and one live server per session, listening on 127.0.0.1."""

from __future__ import annotations

import os

import pytest

from flopwise.serve.config import EngineConfig
from flopwise.serve.toy import random_checkpoint

# nano's shape with a longer context (chunked prefill, many blocks); larger init spreads the logits, so
# greedy choices are far from ties.
SHAPE = ["model.seq_len=192", "model.init_std=0.2"]


def stdlib_texts() -> list[str]:
    root = os.path.dirname(os.__file__)
    return [open(os.path.join(root, name), encoding="utf-8").read() for name in ("os.py", "random.py", "textwrap.py")]


@pytest.fixture(scope="session")
def lfa_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "lfa"
    random_checkpoint(out, stdlib_texts(), "nano", SHAPE)
    return out


@pytest.fixture(scope="session")
def llama_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "llama"
    random_checkpoint(out, stdlib_texts(), "nano", [*SHAPE, "model.lfa=false"], seed=1)
    return out


@pytest.fixture(scope="session")
def served_lfa(lfa_checkpoint):
    from flopwise.serve.loader import load_served_model

    return load_served_model(lfa_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def served_llama(llama_checkpoint):
    from flopwise.serve.loader import load_served_model

    return load_served_model(llama_checkpoint, device="cpu")


SERVER_CONFIG = EngineConfig(block_size=8, max_num_batched_tokens=96, max_num_seqs=64, device="cpu", threads=1)


@pytest.fixture(scope="session", params=["engine-process", "engine-thread"])
def server(lfa_checkpoint, request):
    """The LFA model behind the HTTP API, shared by the API and client tests: the engine in a process of its
    own, then on a thread of the server's process."""
    from flopwise.serve.server import BackgroundServer, create_app

    app = create_app(lfa_checkpoint, SERVER_CONFIG, model_name="toy", engine_process=request.param == "engine-process")
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny matrices on a shared 2-core machine: one intra-op thread is several times faster than two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
