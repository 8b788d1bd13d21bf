"""A lean batch-1 decode step for Llama-family decoders (Llama, Qwen2, Qwen2.5-VL's text model, Mistral).

`transformers`' forward pays for generality on every token: cache objects, mask construction, output
dataclasses, hooks. For batch-1 greedy decoding none of it is needed. This module keeps its own
pre-allocated KV buffers and a precomputed rotary table, and runs exactly the model's math (same modules,
same order) per token. The prefill still runs through the model's own forward (vision merge, multimodal
positions); its KV cache is copied into the buffers once.

Three forms of the step:
- numpy (CPU float32 default, also with int8 decoder layers): the sliced step written in numpy on the same
  weights and KV buffers (views, no copies). A small decoder's step is a few hundred tiny operations, and
  numpy's per-call overhead is a fraction of torch's; its matrix products go through torch when torch has more
  than one thread, and int8 layers' through torch's int8 kernel (see `_NumpyStep`).
- sliced (CPU, other dtypes): attend to the cached positions [0, pos] only; no mask at all.
- static (CUDA default): fixed shapes, the position is a device tensor and a mask hides the unused tail, so
  the whole step is captured once in a CUDA graph and replayed per token (small models are launch-bound).
Every form runs one matrix product for q, k and v together and one for gate and up (the model's own modules,
plain or int8, then hold row slices of the fused weights, so no memory is added), and attends with each KV head's
group of query heads as query rows, so grouped-query attention never copies the KV buffer per query head.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from vlm_ros.memory import release_free_memory
from vlm_ros.models.base import language_model
from vlm_ros.quantize import KERNEL_DTYPE, Int8Linear

_SUPPORTED_LAYERS = {"LlamaDecoderLayer", "Qwen2DecoderLayer", "Qwen2_5_VLDecoderLayer", "MistralDecoderLayer"}
FORMS = ("numpy", "sliced", "static")
# The numpy step's matrix-vector products of at least this many weights go through torch even with one thread:
# numpy's was slower there (one thread, a 0.5B-class decoder's 151936 x 896 lm_head and 4864-wide MLP).
TORCH_PRODUCT_NUMEL = 1 << 20


class LeanDecoder:
    """Pre-allocated KV cache + per-token forward for a supported decoder. One sequence at a time."""

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        lm = language_model(model)
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

    def __init__(self, model: torch.nn.Module, max_len: int, form: str | None = None,
                 cuda_graph: bool | None = None, compile: bool = False):
        lm = language_model(model)
        self.model, self.lm, self.lm_head = model, lm, model.lm_head
        self.layers = list(lm.layers)
        self.head_dim = self.layers[0].self_attn.head_dim
        cfg = lm.config
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.max_len = max_len
        p = next(model.parameters())
        self.device = p.device
        # one matrix product for q, k and v and one for gate and up (the modules then hold row slices of them)
        self._qkv, self._gate_up = [], []
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self._qkv.append(_fuse_rows((attn.q_proj, attn.k_proj, attn.v_proj)))
            gated = hasattr(mlp, "gate_proj") and hasattr(mlp, "act_fn")
            self._gate_up.append(_fuse_rows((mlp.gate_proj, mlp.up_proj)) if gated else None)
        release_free_memory()  # the unfused weights' heap pages (int8 buffers are small enough to live on the heap)
        numpy_ok = not p.is_cuda and p.dtype == torch.float32 and _NumpyStep.supports(self)
        if form is None:
            form = "static" if p.is_cuda else "numpy" if numpy_ok else "sliced"
        if form not in FORMS or (form == "numpy" and not numpy_ok):
            raise ValueError(f"decode form {form!r}: one of {FORMS}; numpy needs a float32 CPU model with SiLU MLPs "
                             "and plain or int8 (kernel) linear layers")
        self.form = form
        self.static = form == "static"
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
        self._static_fn = (torch.compile(self._static_step, dynamic=False) if compile and self.static
                           else self._static_step)
        self._logits: torch.Tensor | None = None
        self._numpy = _NumpyStep(self) if form == "numpy" else None

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

    def step(self, token_id: int) -> torch.Tensor | np.ndarray:
        """Feed one token at the next position; return the next-token logits (V,) (numpy in the numpy form)."""
        pos = self.length
        if pos >= self.max_len or not 0 <= pos + self.offset < self.cos.shape[0]:
            raise ValueError("decoder buffer full")
        if self._numpy is not None:
            logits = self._numpy.step(token_id, pos)
        elif not self.static:
            self._tok.fill_(token_id)
            logits = self._sliced_step(self._tok, pos)
        else:
            self._tok.fill_(token_id)
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
        attn, mlp = layer.self_attn, layer.mlp
        h = layer.input_layernorm(x)  # (1, 1, H)
        if self._qkv[i] is not None:
            q, k, v = self._qkv[i](h).split(
                (self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim), dim=-1)
        else:
            q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
        # the query heads of one KV head are that head's query rows: (1, KVH, group, D)
        q = self._rotate(q.view(1, self.n_kv, self.n_heads // self.n_kv, self.head_dim), cos, sin)
        k = self._rotate(k.view(1, self.n_kv, 1, self.head_dim), cos, sin)  # (1, KVH, 1, D)
        v = v.view(1, self.n_kv, 1, self.head_dim)
        o = attend(i, q, k, v)  # (1, KVH, group, D)
        x = x + attn.o_proj(o.reshape(1, 1, -1))
        h = layer.post_attention_layernorm(x)
        if self._gate_up[i] is None:
            return x + mlp(h)
        gate, up = self._gate_up[i](h).chunk(2, dim=-1)
        return x + mlp.down_proj(mlp.act_fn(gate) * up)

    def _sliced_step(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        cos, sin = self.cos[pos + self.offset], self.sin[pos + self.offset]  # (D,)
        scale = self.layers[0].self_attn.scaling

        def attend(i, q, k, v):
            self.k[i, :, :, pos] = k[:, :, 0]
            self.v[i, :, :, pos] = v[:, :, 0]
            return F.scaled_dot_product_attention(q, self.k[i, :, :, : pos + 1], self.v[i, :, :, : pos + 1],
                                                  scale=scale)

        x = self.lm.embed_tokens(token)  # (1, 1, H)
        for i, layer in enumerate(self.layers):
            x = self._layer(i, layer, x, cos, sin, attend)
        return self.lm_head(self.lm.norm(x))[0, -1]  # (V,)

    def _static_step(self) -> torch.Tensor:
        cos = self.cos.index_select(0, self._rope_pos)  # (1, D)
        sin = self.sin.index_select(0, self._rope_pos)
        mask = (self._positions <= self._pos).view(1, 1, 1, -1)  # (1, 1, 1, T): cached positions only
        scale = self.layers[0].self_attn.scaling

        def attend(i, q, k, v):
            self.k[i].index_copy_(2, self._pos, k)
            self.v[i].index_copy_(2, self._pos, v)
            return F.scaled_dot_product_attention(q, self.k[i], self.v[i], attn_mask=mask, scale=scale)

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


def _fuse_rows(linears: tuple[torch.nn.Module, ...]) -> torch.nn.Linear | Int8Linear | None:
    """One layer whose row blocks are the given layers' (plain or int8), so one matrix product serves them all.

    The layers are pointed at row slices of the fused tensors (made once; a later call finds them adjacent and
    returns views), so the model's own forward keeps working and no memory is added. None when they cannot be
    fused (other layer types, mixed types, dtypes, devices or biases).
    """
    kind = type(linears[0])
    if kind not in (torch.nn.Linear, Int8Linear) or any(type(m) is not kind for m in linears):
        return None
    names = ("weight",) if kind is torch.nn.Linear else ("weight_int8", "scale")
    weights = [getattr(m, names[0]) for m in linears]
    biases = [m.bias for m in linears]
    if len({(w.dtype, w.device, w.shape[1]) for w in weights}) != 1 or len({b is None for b in biases}) != 1:
        return None
    fused = [_adjacent_rows([getattr(m, name) for m in linears]) for name in names]
    bias = None if biases[0] is None else _adjacent_rows(biases)
    if kind is Int8Linear:
        return Int8Linear(*fused, bias)
    layer = torch.nn.Linear(fused[0].shape[1], fused[0].shape[0], bias=bias is not None, device="meta")
    layer.weight = torch.nn.Parameter(fused[0], requires_grad=False)
    if bias is not None:
        layer.bias = torch.nn.Parameter(bias, requires_grad=False)
    return layer


def _adjacent_rows(params: list[torch.Tensor]) -> torch.Tensor:
    """A tensor of the params stacked by rows that the params are views of (copied together on the first call)."""
    first = params[0]
    rows = sum(p.shape[0] for p in params)
    shape, strides = (rows, *first.shape[1:]), first.stride()
    offset, storage = first.storage_offset(), first.untyped_storage().data_ptr()
    for p in params:
        if not p.is_contiguous() or p.untyped_storage().data_ptr() != storage or p.storage_offset() != offset:
            break
        offset += p.numel()
    else:
        return first.detach().as_strided(shape, strides, first.storage_offset())
    with torch.no_grad():
        fused = torch.cat([p.detach() for p in params])
    start = 0
    for p in params:
        p.data = fused[start: start + p.shape[0]]
        start += p.shape[0]
    return fused


class _NumpyStep:
    """The sliced step in numpy, for a LeanDecoder's float32 CPU model: the same math.

    Weights and KV buffers are numpy views of the model's tensors and of the decoder's buffers (the prefill
    fills those through torch). Rotary embedding is one (D, D) matrix per step, shared by every layer, with the
    attention scale folded into the queries' copy. The matrix-vector products read every weight once per token
    and a decoder's weights outgrow a core's cache (the embedded model's: 14 MB), so memory bandwidth bounds
    them: with more than one torch thread they go through torch, whose BLAS splits a product over the cores
    (numpy's OpenBLAS did not on the 2-core CPU; docs/performance.md), with one thread through numpy. More
    threads help only while their cores are free, which is why the node defaults to one (`cpu_threads`).
    Int8 layers (vlm_ros/quantize.py) multiply with torch's int8 kernel on a bf16 copy of the vector. Their step is
    faster than float32's (the embedded model, one thread on the loaded 2-core CPU: 789 vs 584 tok/s, same run)
    although the kernel alone, on one layer in a tight loop, is not: probably because it reads a quarter of the
    bytes while all layers' weights pass through the caches.
    Run the model from one thread: torch's OpenMP keeps a thread team per calling thread, and once two threads
    have run parallel work on a small machine, every parallel region waits on sleeping threads (a 20-token
    query on the 2-core CPU: 42 ms, then 415 ms from a second thread). The node uses one worker thread.
    """

    def __init__(self, decoder: LeanDecoder):
        self.threaded = threaded = torch.get_num_threads() > 1

        def product(layer: torch.nn.Linear | Int8Linear):
            """x -> layer(x) on numpy vectors."""
            b = None if layer.bias is None else layer.bias.detach().numpy()
            if isinstance(layer, Int8Linear):  # the int8 kernel on a bf16 copy of x (its fast input), reused buffer
                w, scale = layer.weight_int8, layer.scale
                x_in = torch.empty((1, layer.in_features), dtype=KERNEL_DTYPE)  # (1, K)

                def int8(x):
                    x_in.copy_(torch.from_numpy(x))
                    return torch._weight_int8pack_mm(x_in, w, scale)[0].float().numpy()
                return int8 if b is None else lambda x: int8(x) + b
            if threaded or layer.weight.numel() >= TORCH_PRODUCT_NUMEL:
                w = layer.weight.detach()
                if b is None:
                    return lambda x: torch.mv(w, torch.from_numpy(x)).numpy()
                return lambda x: torch.mv(w, torch.from_numpy(x)).numpy() + b
            w = layer.weight.detach().numpy()
            return (lambda x: w @ x) if b is None else (lambda x: w @ x + b)

        def norm(mod: torch.nn.Module) -> tuple[np.ndarray, float]:
            return mod.weight.detach().numpy(), float(mod.variance_epsilon)

        self.layers = []
        for i, layer in enumerate(decoder.layers):
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append((
                norm(layer.input_layernorm), product(decoder._qkv[i]), product(attn.o_proj),
                norm(layer.post_attention_layernorm), product(decoder._gate_up[i]), product(mlp.down_proj)))
        lm = decoder.lm
        self.embed, self.norm = lm.embed_tokens.weight.detach().numpy(), norm(lm.norm)
        self.head = product(decoder.lm_head)
        self.k = [decoder.k[i, 0].numpy() for i in range(len(decoder.layers))]  # (KVH, T, D) views
        self.v = [decoder.v[i, 0].numpy() for i in range(len(decoder.layers))]
        self.cos, self.sin = decoder.cos.numpy(), decoder.sin.numpy()
        d = decoder.head_dim
        half = d // 2
        self.rotate_half = np.zeros((d, d), np.float32)  # x @ rotate_half == cat(-x[half:], x[:half])
        self.rotate_half[np.arange(half) + half, np.arange(half)] = -1.0
        self.rotate_half[np.arange(half), np.arange(half) + half] = 1.0
        self.decoder = decoder
        self.heads, self.kv_heads, self.head_dim = decoder.n_heads, decoder.n_kv, d
        self.intermediate = decoder.layers[0].mlp.gate_proj.out_features
        self.scale = np.float32(decoder.layers[0].self_attn.scaling)

    @staticmethod
    def supports(decoder: LeanDecoder) -> bool:
        """SiLU MLPs, fused projections, and every product a float32 nn.Linear or an Int8Linear with its kernel."""
        products = [*decoder._qkv, *decoder._gate_up, decoder.lm_head]
        products += [m for layer in decoder.layers for m in (layer.self_attn.o_proj, layer.mlp.down_proj)]
        return (all(type(getattr(layer.mlp, "act_fn", None)).__name__ in ("SiLUActivation", "SiLU")
                    for layer in decoder.layers)
                and all((type(m) is torch.nn.Linear and m.weight.dtype == torch.float32)
                        or (type(m) is Int8Linear and m.kernel == "int8pack") for m in products))

    @staticmethod
    def _rms(x: np.ndarray, weight_eps: tuple[np.ndarray, float]) -> np.ndarray:
        weight, eps = weight_eps
        return weight * (x * (1.0 / math.sqrt(float(np.dot(x, x)) / x.shape[0] + eps)))

    def step(self, token_id: int, pos: int) -> np.ndarray:
        rope_pos = pos + self.decoder.offset
        rope = np.diag(self.cos[rope_pos]) + self.rotate_half * self.sin[rope_pos]  # x @ rope: rotary embedding
        rope_q = rope * self.scale
        heads, kv_heads, d, rms = self.heads, self.kv_heads, self.head_dim, self._rms
        q_end, k_end, inter = heads * d, (heads + kv_heads) * d, self.intermediate
        x = self.embed[token_id]
        for i, (norm1, qkv, o_proj, norm2, gate_up, down) in enumerate(self.layers):
            projected = qkv(rms(x, norm1))
            q = projected[:q_end].reshape(kv_heads, heads // kv_heads, d) @ rope_q  # (KVH, group, D)
            keys, values = self.k[i], self.v[i]
            keys[:, pos] = projected[q_end:k_end].reshape(kv_heads, d) @ rope
            values[:, pos] = projected[k_end:].reshape(kv_heads, d)
            scores = q @ keys[:, : pos + 1].transpose(0, 2, 1)  # (KVH, group, pos + 1)
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            attended = (weights @ values[:, : pos + 1]) / weights.sum(-1, keepdims=True)  # (KVH, group, D)
            x = x + o_proj(attended.reshape(-1))
            g_u = gate_up(rms(x, norm2))
            g = g_u[:inter]
            x = x + down(g * (0.5 + 0.5 * np.tanh(0.5 * g)) * g_u[inter:])  # silu(gate) * up
        return self.head(rms(x, self.norm))
