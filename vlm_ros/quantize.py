"""Weight-only int8 and int4 for the torch backend: the text decoder's linear layers hold int8 weights + a scale per
row, or 4-bit weights + a scale and zero per group of inputs (`Int4Linear`, CPU only).

Symmetric per-output-channel quantisation (scale = max |w| of the row / 127). The matrix product is torch's own
weight-packed kernel `torch._weight_int8pack_mm` (x (M, K) bf16/fp16/fp32, w (N, K) int8, scales (N,) -> (M, N)),
present on CPU and, depending on the build, CUDA and MPS. On the CPU its bfloat16 path is the fast one (measured on
the 2-core x86 machine, one thread, a 1024 x 4096 layer at batch 1: fp32 F.linear 653 us, int8pack with fp32
input 2,320 us, with bf16 input 227 us), so activations enter the kernel as bfloat16 and leave in the model's
dtype. Where the kernel is missing for the device, the weight is dequantised per call (memory saved at rest,
not compute), which `Int8Linear.kernel` says. A prefill (PREFILL_ROWS or more rows) also multiplies by the
dequantised weight in the activations' dtype: a matrix-matrix product is bound by compute, where the int8 kernel
was slower (the 0.5B-class decoder's 739-token prefill on the CPU: 2.5x fp32's time), and one layer's weight is
dequantised at a time (a transient of one layer). The lean decoder's numpy step (vlm_ros/engine/lean_decoder.py)
calls the same kernel on its fused int8 projections. Int4 layers cannot be fused that way (the kernel's packed
layout interleaves rows and keeps scales input-group first), so int4 decodes through the lean decoder's sliced step.
Only the text decoder's layers are quantised (`language model .layers[*]`, attention and MLP projections): the
embeddings and an lm_head tied to them stay in the model's dtype; the vision encoder is untouched.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from vlm_ros.memory import INT4_GROUPS, release_free_memory
from vlm_ros.models.base import language_model

KERNEL_DTYPE = torch.bfloat16  # activations and scales inside the int8 kernel
PREFILL_ROWS = 16  # from this many rows (tokens) on, multiply by the dequantised weight instead


class Int8Linear(torch.nn.Module):
    """y = x @ (w_int8 * scale)^T + b, with w_int8 (N, K) int8 and scale (N,) per output row."""

    def __init__(self, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8)  # (N, K) int8
        self.register_buffer("scale", scale)  # (N,) KERNEL_DTYPE
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        self.kernel = "int8pack" if _kernel_works(weight_int8.device) else "dequantize"

    @classmethod
    def quantize(cls, linear: torch.nn.Linear) -> Int8Linear:
        """Symmetric per-row quantisation of a linear layer's weight (scale = max |w| of the row / 127)."""
        weight = linear.weight.detach().float()  # (N, K)
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (N,)
        weight_int8 = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(weight_int8, scale.to(KERNEL_DTYPE), None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (..., K) -> (..., N)
        if self.kernel == "int8pack" and x.numel() < PREFILL_ROWS * self.in_features:
            y = torch._weight_int8pack_mm(x.reshape(-1, self.in_features).to(KERNEL_DTYPE), self.weight_int8,
                                          self.scale).reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        else:
            y = F.linear(x, self.weight_int8.to(x.dtype) * self.scale.to(x.dtype)[:, None])
        return y if self.bias is None else y + self.bias

    def dequantized(self) -> torch.Tensor:
        """The weight the layer computes with, (N, K) float32."""
        return self.weight_int8.float() * self.scale.float()[:, None]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}, kernel={self.kernel}"


class Int4Linear(torch.nn.Module):
    """y = x @ w^T + b with w (N, K) at 4 bits: per group of `group` inputs of a row a scale and a zero point,
    w = (q - 8) * scale + zero with q in 0..15 (min/max of the group), packed for torch's CPU int4 kernel
    `torch._weight_int4pack_mm_for_cpu` (bf16 activations). CPU only: the packed layout is the CPU kernel's."""

    def __init__(self, packed: torch.Tensor, scale_zero: torch.Tensor, group: int, in_features: int,
                 bias: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features, self.group = in_features, packed.shape[0], group
        self.register_buffer("packed", packed)  # (N, K / 2) uint8, the kernel's layout
        self.register_buffer("scale_zero", scale_zero)  # (K / group, N, 2) bf16
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)

    @classmethod
    def quantize(cls, linear: torch.nn.Linear) -> Int4Linear:
        weight = linear.weight.detach().float()  # (N, K)
        n, k = weight.shape
        group = next((g for g in INT4_GROUPS if k % g == 0), 0)
        if weight.device.type != "cpu" or not group or n % 16:
            raise ValueError(f"quantize int4: torch's CPU int4 kernel needs a CPU model, outputs divisible by 16 and "
                             f"inputs by one of {INT4_GROUPS}; got a {n}x{k} layer on {weight.device}")
        grouped = weight.reshape(n, k // group, group)
        low, high = grouped.amin(-1, keepdim=True), grouped.amax(-1, keepdim=True)
        scale = (high - low).clamp(min=1e-6) / 15  # (N, K/g, 1)
        q = ((grouped - low) / scale).round().clamp(0, 15).to(torch.int32).reshape(n, k)
        scale_zero = torch.cat([scale, low + 8 * scale], -1).transpose(0, 1).contiguous().to(KERNEL_DTYPE)
        return cls(torch._convert_weight_to_int4pack_for_cpu(q, 1), scale_zero, group, k,
                   None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (..., K) -> (..., N)
        y = torch._weight_int4pack_mm_for_cpu(x.reshape(-1, self.in_features).to(KERNEL_DTYPE), self.packed,
                                              self.group, self.scale_zero)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def dequantized(self) -> torch.Tensor:
        """The weight the layer computes with, (N, K) float32 (the kernel applied to the identity)."""
        eye = torch.eye(self.in_features, dtype=KERNEL_DTYPE)
        return torch._weight_int4pack_mm_for_cpu(eye, self.packed, self.group, self.scale_zero).float().T

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, group={self.group}, bias={self.bias is not None}"


@functools.cache
def _kernel_works(device: torch.device) -> bool:
    """Whether torch has the int8 kernel for this device (once per device)."""
    try:
        x = torch.zeros((1, 32), dtype=KERNEL_DTYPE, device=device)
        torch._weight_int8pack_mm(x, torch.zeros((8, 32), dtype=torch.int8, device=device),
                                  torch.ones(8, dtype=KERNEL_DTYPE, device=device))
        return True
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The text decoder's layers (the same lookup as the lean decoder's)."""
    lm = language_model(model)
    if lm is None:
        raise ValueError(f"quantize: no text decoder with .layers found in {type(model).__name__} "
                         "(decoder-only families only: embedded, llava, qwen2_5_vl, qwen3_vl, idefics3, paligemma)")
    return list(lm.layers)


@torch.no_grad()
def quantize_decoder(model: torch.nn.Module, mode: str) -> int:
    """Replace every nn.Linear in the text decoder's layers by an Int8Linear or Int4Linear (mode int8 | int4), in
    place; returns how many."""
    layer_class = {"int8": Int8Linear, "int4": Int4Linear}[mode]
    count = 0
    for layer in decoder_layers(model):
        for name, module in list(layer.named_modules()):
            if type(module) is torch.nn.Linear:
                parent_name, _, child = name.rpartition(".")
                setattr(layer.get_submodule(parent_name) if parent_name else layer, child, layer_class.quantize(module))
                count += 1
        release_free_memory()  # the replaced weights' pages, else they stay resident (measured: +40% peak)
    return count


def decoder_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the text decoder's parameters and buffers (embeddings, layers, final norm), each tensor once."""
    lm = language_model(model)
    seen, total = set(), 0
    for tensor in [*lm.parameters(), *lm.buffers(), *getattr(model, "lm_head", torch.nn.Identity()).parameters()]:
        if tensor.data_ptr() not in seen and not tensor.is_meta:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total
