"""A preset's headline numbers, as `flopwise info` shows them."""

from __future__ import annotations

from flopwise.flops import count_parameters_meta, model_flops_per_token, param_counts
from flopwise.models.config import get_preset


def model_info(preset: str) -> dict:
    cfg = get_preset(preset)
    counts = param_counts(cfg)
    params = count_parameters_meta(cfg)
    return {
        "preset": preset,
        "params": params,
        "params_billions": round(params / 1e9, 4),
        "active_params": counts.active,  # per token: the experts a token is not routed to left out
        "active_params_billions": round(counts.active / 1e9, 4),
        "non_embedding_params": counts.non_embedding,
        "flops_per_token": model_flops_per_token(cfg),
        "layers": cfg.layers,
        "hidden": cfg.hidden,
        "heads": cfg.heads,
        "head_dim": cfg.head_dim,
        "kv_heads": cfg.kv_heads,
        "ffn": cfg.ffn,
        "vocab_size": cfg.vocab_size,
        "seq_len": cfg.seq_len,
        "lfa": cfg.lfa,
        "mlp": cfg.mlp,
        **({"experts": cfg.experts, "top_k": cfg.top_k, "router": cfg.router} if cfg.experts else {}),
        **({"shared_ffn": cfg.shared_ffn} if cfg.shared_ffn else {}),
        **({"window": cfg.window, "global_every": cfg.global_every} if cfg.window else {}),
        **({"dense_layers": cfg.dense_layers, "dense_ffn": cfg.dense_ffn} if cfg.dense_layers else {}),
        **({"kv_lora_rank": cfg.kv_lora_rank, "q_lora_rank": cfg.q_lora_rank, "rope_head_dim": cfg.rope_head_dim}
           if cfg.is_latent else {}),
    }
