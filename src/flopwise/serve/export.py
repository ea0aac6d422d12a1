"""`flopwise export --format hf`: a Hugging Face model folder (config.json, model.safetensors, tokenizer,
generation config).

A Llama twin (lfa = false, SwiGLU) becomes a plain `LlamaForCausalLM`: our block is Llama's, with the same
RMSNorm, rotate-half RoPE over the full head dim and grouped-query attention, so only names change. An LFA
model ships its own modeling code (flopwise/serve/hf/*.py, copied into the folder) and loads with
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from flopwise.atomic import atomic_path, atomic_write_json
from flopwise.errors import ConfigError
from flopwise.models.config import ModelConfig
from flopwise.outputs import output_dir
from flopwise.train.checkpoint import read_config, resolve_checkpoint
from flopwise.train.config import config_from_dict
from flopwise.train.engine import build_model, load_engine_state

HF_CODE = Path(__file__).parent / "hf"
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "mlp.w1.weight": "mlp.gate_proj.weight",
    "mlp.w3.weight": "mlp.up_proj.weight",
    "mlp.w2.weight": "mlp.down_proj.weight",
}
_GELU_NAMES = {"mlp.w1.weight": "mlp.up_proj.weight", "mlp.w2.weight": "mlp.down_proj.weight"}


def hf_name(name: str, cfg: ModelConfig) -> str:
    """Our parameter name -> the Hugging Face (Llama-style) one."""
    if name == "tok_embeddings.weight":
        return "model.embed_tokens.weight"
    if name == "norm.weight":
        return "model.norm.weight"
    if name == "output.weight":
        return "lm_head.weight"
    _, index, rest = name.split(".", 2)  # layers.<i>.<rest>
    names = {**_LAYER_NAMES, **_GELU_NAMES} if cfg.mlp == "gelu" else _LAYER_NAMES
    if rest.startswith("attn.lfa."):
        return f"model.layers.{index}.self_attn.lfa.{rest[len('attn.lfa.'):]}"
    return f"model.layers.{index}.{names[rest]}"


def _common(cfg: ModelConfig, eod: int | None) -> dict:
    return {
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden, "intermediate_size": cfg.ffn,
        "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads, "num_key_value_heads": cfg.kv_heads,
        "max_position_embeddings": cfg.seq_len, "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std, "bos_token_id": None, "eos_token_id": eod, "pad_token_id": None,
        "dtype": "float32",
    }


def hf_config(cfg: ModelConfig, eod: int | None) -> dict:
    if getattr(cfg, "experts", 0):
        raise ConfigError("export --format hf: mixture-of-experts models have no Hugging Face mapping yet")
    if getattr(cfg, "window", 0):
        raise ConfigError("export --format hf: sliding-window models have no Hugging Face mapping yet")
    if getattr(cfg, "kv_lora_rank", 0):
        raise ConfigError("export --format hf: latent-attention models have no Hugging Face mapping yet")
    if not cfg.lfa:
        if cfg.mlp != "swiglu":
            raise ConfigError("export --format hf: a model without LFA exports as Llama, which needs model.mlp = 'swiglu'")
        return {**_common(cfg, eod), "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "hidden_act": "silu", "head_dim": cfg.head_dim, "attention_bias": False, "mlp_bias": False,
                "rope_theta": cfg.rope_base, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
                "use_cache": True}
    return {**_common(cfg, eod), "architectures": ["FlopwiseForCausalLM"], "model_type": "flopwise",
            "lfa": True, "mlp": cfg.mlp, "rope_theta": cfg.rope_base, "use_cache": False,
            "auto_map": {"AutoConfig": "configuration_flopwise.FlopwiseConfig",
                         "AutoModelForCausalLM": "modeling_flopwise.FlopwiseForCausalLM"}}


def export_hf(checkpoint: str | Path, dest: str | Path) -> Path:
    """Write the folder at `dest` (built beside it and renamed into place; an existing export is replaced)."""
    from safetensors.torch import save_file

    from flopwise.serve.loader import end_of_document_id, load_tokenizer

    dest = Path(dest)
    if dest.exists() and not (dest / "config.json").is_file():
        raise ConfigError(f"{dest} exists and is not a model export: choose another destination")
    output_dir(dest.parent, f"export destination {dest}: its folder")
    directory = resolve_checkpoint(checkpoint)
    saved = read_config(directory)
    job = config_from_dict(saved["job"])
    cfg = job.model_config()
    tokenizer = load_tokenizer(directory)
    eod = end_of_document_id(saved, tokenizer)
    config = hf_config(cfg, eod)
    model = build_model(cfg, job.train.seed)
    load_engine_state(model, None, directory)
    state = {hf_name(k, cfg): v.detach().contiguous() for k, v in model.state_dict().items()
             if not (k == "output.weight" and cfg.tie_embeddings)}  # tied: stored once, as the embedding

    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with atomic_path(tmp / "model.safetensors") as weights:  # which also undoes save_file's 0600
        save_file(state, str(weights), metadata={"format": "pt", "flopwise_config": json.dumps(cfg.to_dict())})
    atomic_write_json(tmp / "config.json", config)
    atomic_write_json(tmp / "generation_config.json", {"eos_token_id": eod, "bos_token_id": None, "pad_token_id": None})
    shutil.copyfile(directory / "tokenizer.json", tmp / "tokenizer.json")
    eos = tokenizer.id_to_token(eod) if eod is not None else None
    atomic_write_json(tmp / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.seq_len, "eos_token": eos,
        "bos_token": None, "pad_token": eos, "add_bos_token": False, "add_eos_token": False,
        "clean_up_tokenization_spaces": False})
    if cfg.lfa:
        for name in ("configuration_flopwise.py", "modeling_flopwise.py"):
            shutil.copyfile(HF_CODE / name, tmp / name)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest
