"""`flopwise export --format hf`: the Llama twin as transformers' LlamaForCausalLM, the LFA model through
the custom-code path, both with our logits."""

from __future__ import annotations

import stat

import pytest
import torch

transformers = pytest.importorskip("transformers")

from flopwise.serve.config import EngineConfig  # noqa: E402
from flopwise.serve.engine import Engine  # noqa: E402
from flopwise.serve.export import export_hf  # noqa: E402
from flopwise.serve.sampling import SamplingParams  # noqa: E402


@pytest.fixture(scope="module")
def llama_export(llama_checkpoint, tmp_path_factory):
    return export_hf(llama_checkpoint, tmp_path_factory.mktemp("hf") / "llama")


def test_llama_twin_loads_as_llama_for_causal_lm_with_our_logits(llama_export, served_llama):
    hf = transformers.LlamaForCausalLM.from_pretrained(llama_export).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = torch.randint(1, 512, (2, 150), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(ids).logits - served_llama.model(ids)).abs().max() < 1e-4
        # and its greedy generate() is our engine's greedy output
        prompt = ids[0, :40]
        hf_out = hf.generate(prompt[None], max_new_tokens=10, do_sample=False, min_new_tokens=10)[0, 40:].tolist()
    ours = Engine(served_llama, EngineConfig(block_size=8, device="cpu")).generate(
        [prompt.tolist()], SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))[0]
    assert hf_out == ours
    tok = transformers.AutoTokenizer.from_pretrained(llama_export)
    assert tok("def f(x):").input_ids == served_llama.tokenizer.encode("def f(x):").ids
    assert tok.eos_token == "<|endoftext|>" and hf.config.eos_token_id == served_llama.eod_id


def test_lfa_model_loads_through_custom_code_with_our_logits(lfa_checkpoint, served_lfa, tmp_path):
    folder = export_hf(lfa_checkpoint, tmp_path / "lfa")
    assert (folder / "modeling_flopwise.py").is_file()
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    ids = torch.randint(1, 512, (2, 150), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :50] = 0  # left padding: the filter and positions start at the first real token
    with torch.no_grad():
        assert (hf(ids).logits - served_lfa.model(ids)).abs().max() < 1e-4
        padded = hf(ids, attention_mask=mask).logits[1, 50:]
        assert (padded - served_lfa.model(ids[1:, 50:])[0]).abs().max() < 1e-4


def test_cli_export_hf_and_refusals(llama_checkpoint, tmp_path, capsys, umask_022):
    from flopwise.cli import main

    def run(*args) -> int:
        try:
            main(["export", *args])
        except SystemExit as exc:
            return exc.code
        return 0

    assert run(str(llama_checkpoint), str(tmp_path / "out"), "--format", "hf") == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    # the weights are readable by whoever may read the folder (save_file alone writes them 0600)
    assert stat.S_IMODE((tmp_path / "out" / "model.safetensors").stat().st_mode) == umask_022
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert run(str(llama_checkpoint), str(tmp_path / "notes"), "--format", "hf") == 2
    assert "not a model export" in capsys.readouterr().err
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    assert run(str(llama_checkpoint), str(tmp_path / "x"), "--format", "onnx") == 2


def test_a_sliding_window_model_is_refused_by_the_server_and_the_export(tmp_path):
    """The paged engine and the Hugging Face mapping attend to every cached token: a windowed model is refused by
    name rather than served with the wrong attention."""
    from flopwise.errors import ConfigError
    from flopwise.serve.loader import load_served_model
    from flopwise.serve.toy import random_checkpoint
    from tests.serve.conftest import SHAPE, stdlib_texts

    out = tmp_path / "windowed"
    random_checkpoint(out, stdlib_texts()[:1], "nano", [*SHAPE, "model.lfa=false", "model.window=16"])
    served = load_served_model(out)  # the checkpoint loads like any other
    with pytest.raises(ConfigError, match="sliding-window model .* cannot be served yet"):
        Engine(served, EngineConfig(max_num_seqs=2))
    from flopwise.models.config import get_preset
    from flopwise.serve.export import hf_config
    with pytest.raises(ConfigError, match="sliding-window models have no Hugging Face mapping"):
        hf_config(get_preset("nano-llama").replace(window=16), None)


def test_a_latent_attention_model_is_refused_by_name_by_the_paged_engine_and_the_export(tmp_path):
    """Its keys are wider than its values and it has no latent cache: refused by name rather than served wrongly."""
    from flopwise.errors import ConfigError
    from flopwise.models.config import get_preset
    from flopwise.serve.export import hf_config
    from flopwise.serve.loader import load_served_model
    from flopwise.serve.toy import random_checkpoint
    from tests.serve.conftest import SHAPE, stdlib_texts

    out = tmp_path / "latent"
    random_checkpoint(out, stdlib_texts()[:1], "nano", [*SHAPE, "model.lfa=false", "model.kv_heads=4",
                                                         "model.kv_lora_rank=16", "model.rope_head_dim=8"])
    served = load_served_model(out)  # the checkpoint loads like any other
    with pytest.raises(ConfigError, match="latent-attention model .* cannot be served yet"):
        Engine(served, EngineConfig(max_num_seqs=2))
    latent = get_preset("nano-llama").replace(kv_heads=4, kv_lora_rank=16, rope_head_dim=8)
    with pytest.raises(ConfigError, match="latent-attention models have no Hugging Face mapping"):
        hf_config(latent, None)
