"""A lean batch-1 decode step for Llama-family decoders (Llama, Qwen2, Mistral), reusing the model's weights.

`transformers`' forward pays for generality on every token: cache objects, mask construction, output
dataclasses, hooks. For batch-1 greedy decoding none of it is needed: one token attends to all cached
positions, so no mask at all. This module keeps its own pre-allocated KV buffers, precomputes the rotary
tables once, and runs exactly the model's math (same modules, same order) per token.
The prefill still runs through the model's own forward (vision merge, multimodal positions); its KV cache is
copied into the buffers once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_SUPPORTED_LAYERS = {"LlamaDecoderLayer", "Qwen2DecoderLayer", "MistralDecoderLayer"}


def _language_model(model: torch.nn.Module) -> torch.nn.Module | None:
    for path in ("model.language_model", "language_model", "model"):
        mod = model
        for name in path.split("."):
            mod = getattr(mod, name, None)
            if mod is None:
                break
        if mod is not None and hasattr(mod, "layers") and hasattr(mod, "embed_tokens"):
            return mod
    return None


class LeanDecoder:
    """Pre-allocated KV cache + per-token forward for a supported decoder. One sequence at a time."""

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        lm = _language_model(model)
        if lm is None or getattr(model, "lm_head", None) is None or not hasattr(lm, "rotary_emb"):
            return False
        layers = list(lm.layers)
        return bool(layers) and all(
            type(layer).__name__ in _SUPPORTED_LAYERS and not hasattr(layer.self_attn, "q_norm")
            and getattr(layer, "attention_type", "full_attention") == "full_attention"
            for layer in layers
        )

    def __init__(self, model: torch.nn.Module, max_len: int):
        lm = _language_model(model)
        self.lm, self.lm_head = lm, model.lm_head
        self.layers = list(lm.layers)
        attn = self.layers[0].self_attn
        self.head_dim = attn.head_dim
        cfg = lm.config
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.max_len = max_len
        p = next(model.parameters())
        shape = (len(self.layers), 1, self.n_kv, max_len, self.head_dim)  # (L, B, KVH, T, D)
        self.k = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.v = torch.zeros(shape, dtype=p.dtype, device=p.device)
        positions = torch.arange(max_len, device=p.device)[None]  # (1, T)
        cos, sin = lm.rotary_emb(self.k[0], position_ids=positions)  # (1, T, D) each
        self.cos, self.sin = cos[0], sin[0]  # (T, D)
        self.length = 0

    def load_prefix(self, cache, length: int) -> None:
        """Copy the prefill's KV cache (a transformers Cache) into the buffers."""
        if length > self.max_len:
            raise ValueError(f"prompt of {length} tokens exceeds the decoder buffer of {self.max_len}")
        for i, layer in enumerate(cache.layers[: len(self.layers)]):
            self.k[i, :, :, :length] = layer.keys[:, :, :length]
            self.v[i, :, :, :length] = layer.values[:, :, :length]
        self.length = length

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Feed one token (a (1, 1) long tensor) at the next position; return the next-token logits (V,)."""
        pos = self.length
        if pos >= self.max_len:
            raise ValueError("decoder buffer full")
        cos, sin = self.cos[pos], self.sin[pos]  # (D,)
        x = self.lm.embed_tokens(token)  # (1, 1, H)
        end = pos + 1
        gqa = self.n_kv != self.n_heads
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(1, 1, self.n_heads, self.head_dim).transpose(1, 2)  # (1, NH, 1, D)
            k = attn.k_proj(h).view(1, 1, self.n_kv, self.head_dim).transpose(1, 2)  # (1, KVH, 1, D)
            v = attn.v_proj(h).view(1, 1, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            self.k[i, :, :, pos] = k[:, :, 0]
            self.v[i, :, :, pos] = v[:, :, 0]
            o = F.scaled_dot_product_attention(q, self.k[i, :, :, :end], self.v[i, :, :, :end], scale=attn.scaling,
                                               enable_gqa=gqa)  # (1, NH, 1, D)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(1, 1, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.length = end
        return self.lm_head(self.lm.norm(x))[0, -1]  # (V,)
