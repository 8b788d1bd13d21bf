"""A lean batch-1 decode step for Llama-family decoders (Llama, Qwen2, Qwen2.5-VL's text model, Mistral).

`transformers`' forward pays for generality on every token: cache objects, mask construction, output
dataclasses, hooks. For batch-1 greedy decoding none of it is needed. This module keeps its own
pre-allocated KV buffers and a precomputed rotary table, and runs exactly the model's math (same modules,
same order) per token. The prefill still runs through the model's own forward (vision merge, multimodal
positions); its KV cache is copied into the buffers once.

Two forms of the step:
- sliced (CPU default): attend to the cached positions [0, pos] only; no mask at all.
- static (CUDA default): fixed shapes, the position is a device tensor and a mask hides the unused tail, so
  the whole step is captured once in a CUDA graph and replayed per token (small models are launch-bound).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_SUPPORTED_LAYERS = {"LlamaDecoderLayer", "Qwen2DecoderLayer", "Qwen2_5_VLDecoderLayer", "MistralDecoderLayer"}


def _language_model(model: torch.nn.Module) -> torch.nn.Module | None:
    for path in ("model.language_model", "language_model", "model.text_model", "model"):
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
        rope = getattr(lm.config, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") not in ("default", "llama3", "linear"):
            return False  # dynamic/yarn-style scaling depends on the sequence: leave those to transformers
        layers = list(lm.layers)
        return bool(layers) and all(
            type(layer).__name__ in _SUPPORTED_LAYERS and not hasattr(layer.self_attn, "q_norm")
            and getattr(layer, "attention_type", "full_attention") == "full_attention"
            for layer in layers
        )

    def __init__(self, model: torch.nn.Module, max_len: int, static: bool | None = None,
                 cuda_graph: bool | None = None, compile: bool = False):
        lm = _language_model(model)
        self.model, self.lm, self.lm_head = model, lm, model.lm_head
        self.layers = list(lm.layers)
        self.head_dim = self.layers[0].self_attn.head_dim
        cfg = lm.config
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.max_len = max_len
        p = next(model.parameters())
        self.device = p.device
        self.static = p.is_cuda if static is None else static
        self.cuda_graph = self.static and p.is_cuda if cuda_graph is None else cuda_graph
        shape = (len(self.layers), 1, self.n_kv, max_len, self.head_dim)  # (L, B, KVH, T, D)
        self.k = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.v = torch.zeros(shape, dtype=p.dtype, device=p.device)
        table = 2 * max_len  # rotary positions may run ahead of cache positions (multimodal position offsets)
        cos, sin = lm.rotary_emb(self.k[0], position_ids=torch.arange(table, device=p.device)[None])
        self.cos, self.sin = cos.reshape(table, -1), sin.reshape(table, -1)  # (P, D)
        self.length = 0  # cached positions
        self.offset = 0  # rotary position - cache position (Qwen2.5-VL's rope_deltas after the image)
        # Static-step state: inputs live in fixed device tensors so that a CUDA graph can replay the step.
        self._tok = torch.zeros((1, 1), dtype=torch.long, device=p.device)
        self._pos = torch.zeros((1,), dtype=torch.long, device=p.device)
        self._rope_pos = torch.zeros((1,), dtype=torch.long, device=p.device)
        self._positions = torch.arange(max_len, device=p.device)
        self._graph: torch.cuda.CUDAGraph | None = None
        # torch.compile fuses the step's many small element-wise kernels (norms, rotary, residuals); the fused
        # step is then captured like the plain one. Compiling takes tens of seconds on first use.
        self._static_fn = torch.compile(self._static_step, dynamic=False) if compile and self.static else self._static_step
        self._logits: torch.Tensor | None = None

    def load_prefix(self, cache, length: int) -> None:
        """Copy the prefill's KV cache (a transformers Cache) into the buffers."""
        if length > self.max_len:
            raise ValueError(f"prompt of {length} tokens exceeds the decoder buffer of {self.max_len}")
        for i, layer in enumerate(cache.layers[: len(self.layers)]):
            self.k[i, :, :, :length] = layer.keys[:, :, :length]
            self.v[i, :, :, :length] = layer.values[:, :, :length]
        self.length = length
        deltas = getattr(getattr(self.model, "model", None), "rope_deltas", None)
        self.offset = int(deltas.reshape(-1)[0]) if deltas is not None else 0

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Feed one token (a (1, 1) long tensor) at the next position; return the next-token logits (V,)."""
        pos = self.length
        if pos >= self.max_len or not 0 <= pos + self.offset < self.cos.shape[0]:
            raise ValueError("decoder buffer full")
        if not self.static:
            logits = self._sliced_step(token, pos)
        else:
            self._tok.copy_(token)
            self._pos.fill_(pos)
            self._rope_pos.fill_(pos + self.offset)
            if not self.cuda_graph:
                logits = self._static_fn()
            else:
                if self._graph is None:
                    self._capture()
                self._graph.replay()
                logits = self._logits
        self.length = pos + 1
        return logits

    # --- the two forms of one step ---------------------------------------------------------------------------
    def _layer(self, i, layer, x, cos, sin, attend):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(1, 1, self.n_heads, self.head_dim).transpose(1, 2)  # (1, NH, 1, D)
        k = attn.k_proj(h).view(1, 1, self.n_kv, self.head_dim).transpose(1, 2)  # (1, KVH, 1, D)
        v = attn.v_proj(h).view(1, 1, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        o = attend(i, q, k, v)  # (1, NH, 1, D)
        x = x + attn.o_proj(o.transpose(1, 2).reshape(1, 1, -1))
        return x + layer.mlp(layer.post_attention_layernorm(x))

    def _sliced_step(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        cos, sin = self.cos[pos + self.offset], self.sin[pos + self.offset]  # (D,)
        gqa = self.n_kv != self.n_heads
        scale = self.layers[0].self_attn.scaling

        def attend(i, q, k, v):
            self.k[i, :, :, pos] = k[:, :, 0]
            self.v[i, :, :, pos] = v[:, :, 0]
            return F.scaled_dot_product_attention(q, self.k[i, :, :, : pos + 1], self.v[i, :, :, : pos + 1],
                                                  scale=scale, enable_gqa=gqa)

        x = self.lm.embed_tokens(token)  # (1, 1, H)
        for i, layer in enumerate(self.layers):
            x = self._layer(i, layer, x, cos, sin, attend)
        return self.lm_head(self.lm.norm(x))[0, -1]  # (V,)

    def _static_step(self) -> torch.Tensor:
        cos = self.cos.index_select(0, self._rope_pos)  # (1, D)
        sin = self.sin.index_select(0, self._rope_pos)
        mask = (self._positions <= self._pos).view(1, 1, 1, -1)  # (1, 1, 1, T): cached positions only
        gqa = self.n_kv != self.n_heads
        scale = self.layers[0].self_attn.scaling

        def attend(i, q, k, v):
            self.k[i].index_copy_(2, self._pos, k)
            self.v[i].index_copy_(2, self._pos, v)
            return F.scaled_dot_product_attention(q, self.k[i], self.v[i], attn_mask=mask, scale=scale,
                                                  enable_gqa=gqa)

        x = self.lm.embed_tokens(self._tok)  # (1, 1, H)
        for i, layer in enumerate(self.layers):
            x = self._layer(i, layer, x, cos, sin, attend)
        return self.lm_head(self.lm.norm(x))[0, -1]  # (V,)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _capture(self) -> None:
        """Record the static step once; warm-up runs write to the current position, which the real step rewrites."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._static_fn()
        torch.cuda.current_stream().wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._logits = self._static_fn()
