"""Weight-only int8 for the torch backend: the text decoder's linear layers hold int8 weights + a scale per row.

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
calls the same kernel on its fused int8 projections.
Only the text decoder's layers are quantised (`language model .layers[*]`, attention and MLP projections): the
embeddings and an lm_head tied to them stay in the model's dtype; the vision encoder is untouched.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from vlm_ros.memory import release_free_memory
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
        raise ValueError(f"quantize int8: no text decoder with .layers found in {type(model).__name__} "
                         "(decoder-only families only: embedded, llava, qwen2_5_vl, qwen3_vl, idefics3, paligemma)")
    return list(lm.layers)


@torch.no_grad()
def quantize_decoder_int8(model: torch.nn.Module) -> int:
    """Replace every nn.Linear in the text decoder's layers by an Int8Linear, in place; returns how many."""
    count = 0
    for layer in decoder_layers(model):
        for name, module in list(layer.named_modules()):
            if type(module) is torch.nn.Linear:
                parent_name, _, child = name.rpartition(".")
                setattr(layer.get_submodule(parent_name) if parent_name else layer, child, Int8Linear.quantize(module))
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
