"""ONNX export of a LLaVA-family VLM as three graphs: vision + projector, prefill, and one decode step.

The decoder graphs are not traced through transformers' forward (cache objects, mask builders): a small
wrapper runs the model's own modules in the model's order (the same math as engine/lean_decoder.py), with
the KV cache as explicit per-layer inputs and outputs, so that onnxruntime and TensorRT see plain tensors.
Exports are float32; TensorRT lowers precision at build time (FP16 by default).

Supported: LLaVA-style models whose decoder the lean decoder supports (Llama / Qwen2 / Mistral layers,
default, llama3 or linear rope): the embedded default model and `llava` checkpoints. Other families raise
`UnsupportedModelError` with the reason (Qwen2.5-VL's 3-D multimodal rope, encoder-decoder Florence-2, ...).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vlm_ros.engine.lean_decoder import LeanDecoder, _language_model
from vlm_ros.export import names

OPSET = 17
EXPORT_VERSION = 1  # bump when the graphs' structure or names change: it is part of the cache key
EXPORTABLE_FAMILIES = ("embedded", "llava")


class UnsupportedModelError(ValueError):
    """The model (family or decoder) has no ONNX export here; the message says why."""


@dataclass(frozen=True)
class GraphShapes:
    """The fixed sizes of one model's graphs (dynamic axes: prompt length S and cache length P)."""

    pixel_shape: tuple[int, int, int, int]  # (1, C, H, W)
    image_tokens: int  # N
    embed_dim: int  # E (decoder hidden size)
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int
    image_token_id: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GraphShapes:
        return cls(**{**d, "pixel_shape": tuple(d["pixel_shape"])})


@dataclass
class ExportResult:
    directory: Path
    shapes: GraphShapes
    seconds: float


def check_exportable(adapter) -> None:
    """Raise UnsupportedModelError unless `adapter`'s model can be exported by this module."""
    if adapter.family not in EXPORTABLE_FAMILIES:
        raise UnsupportedModelError(
            f"ONNX export supports the families {', '.join(EXPORTABLE_FAMILIES)}; '{adapter.family}' is not "
            "supported yet (use backend torch)")
    if not LeanDecoder.supports(adapter.model):
        raise UnsupportedModelError(f"the decoder of this {adapter.family} model (layers "
                                    f"{type(_language_model(adapter.model).layers[0]).__name__}) is not exportable")


def graph_shapes(adapter) -> GraphShapes:
    model = adapter.model
    vision = model.config.vision_config
    lm = _language_model(model)
    attn = lm.layers[0].self_attn
    pixels = (1, int(vision.num_channels), int(vision.image_size), int(vision.image_size))
    with torch.inference_mode():
        features = _Vision(model)(torch.zeros(pixels, dtype=next(model.parameters()).dtype,
                                              device=adapter.device))
    return GraphShapes(pixel_shape=pixels, image_tokens=int(features.shape[0]), embed_dim=int(features.shape[1]),
                       layers=len(lm.layers), kv_heads=int(lm.config.num_key_value_heads),
                       head_dim=int(attn.head_dim), vocab=int(model.lm_head.out_features),
                       image_token_id=int(model.config.image_token_id))


class _Vision(torch.nn.Module):
    """pixel_values (1, C, H, W) -> image_features (N, E): the vision tower and the projector."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        out = self.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        return torch.cat(list(out.pooler_output), dim=0)  # (N, E)


class _Decoder(torch.nn.Module):
    """The language model with explicit KV tensors; `forward` is the prefill, `step` one decode step."""

    def __init__(self, model):
        super().__init__()
        lm = _language_model(model)
        self.lm, self.lm_head, self.layers = lm, model.lm_head, lm.layers
        attn = lm.layers[0].self_attn
        self.n_heads, self.n_kv, self.head_dim = lm.config.num_attention_heads, lm.config.num_key_value_heads, attn.head_dim
        self.scale = attn.scaling
        self.inv_freq = lm.rotary_emb.inv_freq  # already adjusted for llama3 / linear scaling
        self.rope_scale = float(getattr(lm.rotary_emb, "attention_scaling", 1.0))
        self.image_token_id = int(model.config.image_token_id)

    def _rope(self, positions):  # (T,) -> cos, sin (T, D)
        freqs = positions.to(torch.float32)[:, None] * self.inv_freq.to(torch.float32)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos() * self.rope_scale, emb.sin() * self.rope_scale

    @staticmethod
    def _rotate(x, cos, sin):
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def _run(self, x, past, start):
        """x (1, T, H) at positions start.. start+T-1; past: per layer (k, v) (1, KVH, P, D) or None."""
        t = x.shape[1]
        cos, sin = self._rope(torch.arange(t, device=x.device) + start)  # (T, D)
        presents = []
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(1, t, self.n_heads, self.head_dim).transpose(1, 2)  # (1, NH, T, D)
            k = attn.k_proj(h).view(1, t, self.n_kv, self.head_dim).transpose(1, 2)  # (1, KVH, T, D)
            v = attn.v_proj(h).view(1, t, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            if past is not None:
                k = torch.cat((past[2 * i], k), dim=2)  # (1, KVH, P + T, D)
                v = torch.cat((past[2 * i + 1], v), dim=2)
            presents += [k, v]
            if self.n_kv != self.n_heads:
                k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
                v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=past is None, scale=self.scale)  # (1, NH, T, D)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(1, t, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        logits = self.lm_head(self.lm.norm(x[:, -1:]))[:, 0]  # (1, V)
        return (logits.float(), *presents)

    def forward(self, input_ids, image_features):
        """Prefill: input_ids (1, S), image_features (N, E) -> logits (1, V), presents."""
        embeds = self.lm.embed_tokens(input_ids)  # (1, S, E)
        is_image = input_ids[0] == self.image_token_id  # (S,)
        index = (torch.cumsum(is_image.to(torch.int64), dim=0) - 1).clamp(min=0)  # k-th image token -> row k
        merged = torch.where(is_image[None, :, None], image_features[index][None], embeds)
        return self._run(merged, None, 0)


class _DecodeStep(torch.nn.Module):
    def __init__(self, decoder: _Decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, input_ids, *past):
        """input_ids (1, 1), past (1, KVH, P, D) x 2L -> logits (1, V), presents (1, KVH, P + 1, D) x 2L."""
        x = self.decoder.lm.embed_tokens(input_ids)  # (1, 1, E)
        return self.decoder._run(x, past, past[0].shape[2])


def export_model(adapter, directory: str | Path, log=print) -> ExportResult:
    """Write vision.onnx, prefill.onnx and decode.onnx for `adapter`'s model into `directory` (float32, CPU)."""
    check_exportable(adapter)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = adapter.model
    if adapter.device.type != "cpu" or next(model.parameters()).dtype != torch.float32:
        raise ValueError("export needs the model on the CPU in float32 (load it with device cpu, dtype float32)")
    t0 = time.monotonic()
    shapes = graph_shapes(adapter)
    decoder = _Decoder(model).eval()
    L, kvh, d = shapes.layers, shapes.kv_heads, shapes.head_dim
    pixels = torch.zeros(shapes.pixel_shape)
    ids = torch.full((1, shapes.image_tokens + 5), 3, dtype=torch.long)
    ids[0, 1: 1 + shapes.image_tokens] = shapes.image_token_id
    features = torch.zeros(shapes.image_tokens, shapes.embed_dim)
    past = [torch.zeros(1, kvh, 7, d) for _ in range(2 * L)]
    s, p = names.SEQUENCE, names.PAST
    jobs = [
        (names.VISION_FILE, _Vision(model), (pixels,), [names.PIXEL_VALUES], [names.IMAGE_FEATURES], {}),
        (names.PREFILL_FILE, decoder, (ids, features), [names.INPUT_IDS, names.IMAGE_FEATURES],
         [names.LOGITS, *names.present_names(L)],
         {names.INPUT_IDS: {1: s}, **{n: {2: s} for n in names.present_names(L)}}),
        (names.DECODE_FILE, _DecodeStep(decoder), (torch.zeros(1, 1, dtype=torch.long), *past),
         [names.INPUT_IDS, *names.past_names(L)], [names.LOGITS, *names.present_names(L)],
         {**{n: {2: p} for n in names.past_names(L)}, **{n: {2: f"{p}_plus_1"} for n in names.present_names(L)}}),
    ]
    with torch.inference_mode(), warnings.catch_warnings():
        # The vision tower's shape checks trace as constants: right here, its input size is fixed.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        for file, module, args, inputs, outputs, dynamic in jobs:
            t = time.monotonic()
            torch.onnx.export(module, args, str(directory / file), input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic or None, opset_version=OPSET, dynamo=False,
                              do_constant_folding=True)
            log(f"exported {file} ({(directory / file).stat().st_size / 1e6:.1f} MB) in {time.monotonic() - t:.1f} s")
    return ExportResult(directory, shapes, time.monotonic() - t0)


def export_key(model_dir: str | Path, family: str) -> dict:
    """What an export depends on: the model's content, the family adapter, this exporter's version and opset."""
    from vlm_ros.export.manifest import model_hash

    return {"model_sha256": model_hash(model_dir), "family": family, "export_version": EXPORT_VERSION,
            "opset": OPSET}


def ensure_export(adapter, model_dir: str | Path, root: Path, policy: str, log=print) -> tuple[Path, GraphShapes]:
    """The export folder of `adapter`'s model under `root`, reused, built or refused per `policy` (manifest.py)."""
    from vlm_ros.export.manifest import ensure, folder_name

    check_exportable(adapter)
    directory = root / folder_name(model_dir, adapter.family, "onnx")

    def build(tmp: Path) -> dict:
        result = export_model(adapter, tmp, log)
        return {"shapes": result.shapes.to_dict(), "model_dir": str(Path(model_dir).resolve()),
                "torch": torch.__version__, "files": sorted(names.GRAPH_FILES.values())}

    manifest = ensure(directory, "onnx", export_key(model_dir, adapter.family), policy, build, log)
    return directory, GraphShapes.from_dict(manifest.info["shapes"])
