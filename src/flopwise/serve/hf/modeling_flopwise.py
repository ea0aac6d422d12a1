"""A flopwise decoder (pre-norm RMSNorm, RoPE over the full head dim, grouped-query attention with Localized
Filtering-based Attention, SwiGLU, tied embeddings) for transformers' custom-code path.

LFA (Yuan 2.0, arXiv 2311.15786): queries and keys are projected from x' = RMSNorm(y2 + x), where
y1[t] = A0 x[t-1] + A1 x[t] + a and y2[t] = B0 y1[t-1] + B1 y1[t] + b; values from x. The filter starts
from zeros at each sequence's first real token, so left padding never leaks into it.

No KV cache: every forward runs the whole sequence (generate() works, slowly); for fast serving use
`flopwise serve`."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_flopwise import FlopwiseConfig


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class FlopwiseFilter(nn.Module):
    def __init__(self, hidden, eps):
        super().__init__()
        self.conv1 = nn.Conv1d(hidden, hidden // 2, kernel_size=2)  # weight[:, :, 0] applies to t-1
        self.conv2 = nn.Conv1d(hidden // 2, hidden, kernel_size=2)
        self.norm = nn.RMSNorm(hidden, eps=eps)

    @staticmethod
    def _conv(x, keep, conv):
        prev = F.pad(x[:, :-1], (0, 0, 1, 0)) * keep
        return F.linear(prev, conv.weight[:, :, 0]) + F.linear(x, conv.weight[:, :, 1], conv.bias)

    def forward(self, x, keep):
        y1 = self._conv(x, keep, self.conv1)
        y2 = self._conv(y1, keep, self.conv2)
        return self.norm(y2 + x)


class FlopwiseAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.head_dim = config.hidden_size // config.num_attention_heads
        heads, kv = config.num_attention_heads, config.num_key_value_heads
        self.q_proj = nn.Linear(config.hidden_size, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, config.hidden_size, bias=False)
        self.lfa = FlopwiseFilter(config.hidden_size, config.rms_norm_eps) if config.lfa else None

    def forward(self, x, cos, sin, keep, mask):
        b, s, _ = x.shape
        qk = self.lfa(x, keep) if self.lfa is not None else x
        q = self.q_proj(qk).view(b, s, -1, self.head_dim)
        k = self.k_proj(qk).view(b, s, -1, self.head_dim)
        v = self.v_proj(x).view(b, s, -1, self.head_dim)
        q = (q.float() * cos + _rotate_half(q.float()) * sin).type_as(x)
        k = (k.float() * cos + _rotate_half(k.float()) * sin).type_as(x)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class FlopwiseMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.kind = config.mlp
        h, f = config.hidden_size, config.intermediate_size
        if self.kind == "swiglu":
            self.gate_proj = nn.Linear(h, f, bias=False)
            self.up_proj = nn.Linear(h, f, bias=False)
        else:
            self.up_proj = nn.Linear(h, f, bias=False)
        self.down_proj = nn.Linear(f, h, bias=False)

    def forward(self, x):
        if self.kind == "swiglu":
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))


class FlopwiseBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = FlopwiseAttention(config)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = FlopwiseMLP(config)

    def forward(self, x, cos, sin, keep, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, keep, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class FlopwisePreTrainedModel(PreTrainedModel):
    config_class = FlopwiseConfig
    base_model_prefix = "model"
    _no_split_modules = ["FlopwiseBlock"]

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)


class FlopwiseModel(FlopwisePreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([FlopwiseBlock(config) for _ in range(config.num_hidden_layers)])
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()

    def forward(self, input_ids, attention_mask=None):
        b, s = input_ids.shape
        x = self.embed_tokens(input_ids)
        real = torch.ones(b, s, dtype=torch.bool, device=x.device) if attention_mask is None else attention_mask.bool()
        positions = (real.long().cumsum(1) - 1).clamp(min=0)  # left padding: positions start at the first real token
        first = real & (positions == 0)
        keep = (real & ~first).unsqueeze(-1).to(x.dtype)  # the filter restarts at the first real token
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        inv = 1.0 / (self.config.rope_theta ** (torch.arange(0, head_dim, 2, device=x.device).float() / head_dim))
        angles = positions.float().unsqueeze(-1) * inv
        angles = torch.cat([angles, angles], dim=-1).unsqueeze(2)  # [b, s, 1, d]
        cos, sin = angles.cos(), angles.sin()
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
        mask = (causal.unsqueeze(0) & real.unsqueeze(1)) | torch.eye(s, dtype=torch.bool, device=x.device)
        mask = mask.unsqueeze(1)  # [b, 1, s, s]; a pad row attends to itself only (never read)
        for layer in self.layers:
            x = layer(x, cos, sin, keep, mask)
        return self.norm(x)


class FlopwiseForCausalLM(FlopwisePreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.model = FlopwiseModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        logits = self.lm_head(self.model(input_ids, attention_mask))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)
