"""Configuration of a flopwise model with Localized Filtering-based Attention (Yuan 2.0, arXiv 2311.15786),
exported by `flopwise export --format hf`. Load with AutoConfig / AutoModelForCausalLM and
trust_remote_code=True."""

from transformers import PreTrainedConfig


class FlopwiseConfig(PreTrainedConfig):
    model_type = "flopwise"

    vocab_size: int = 8192
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    max_position_embeddings: int = 256
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    lfa: bool = True
    mlp: str = "swiglu"  # "swiglu" or "gelu"
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    use_cache: bool = False
