"""Weight-only int8 and int4 Linear layers for float checkpoints (`quantize="int8"|"int4"`).

  * Int8Linear: one int8 per weight and one float scale per output channel
    (symmetric, scale = max|w| / 127).
  * int4, groups of 32 (the default): 4-bit unsigned quants with a scale and a minimum per
    group (asymmetric min/max), which is GGML's Q4_1 block with fp16 scale and minimum: a
    GGUFLinear on the native kernels (the quants are computed from the fp16-rounded scale
    and minimum, so nothing else is lost).
  * Int4Linear, other group sizes or no native kernels: the same scheme with float32
    scales, by torch's `_weight_int4pack_mm_for_cpu`. Its dequantization convention is
    w = (q - 8) * scale + zero, so zero = min + 8 * scale for q = round((w - min) / scale).

On a CPU with the native kernels both run on the packed integer kernels of gguf_linear.py
(int8 as Q8_0 blocks of scale 1, the channel scales applied after): torch's weight-only
kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) measured 80-100x slower
than a float matmul for a 512-token prompt and ~0.5 GB/s of weights when decoding here.
Activations keep float32 accuracy. Quantization happens per tensor while the model is
loaded (see loader.py), so the float model is never held in full.
"""

from __future__ import annotations

import torch
from torch import nn

from .ggml_types import GGMLType
from .gguf_linear import GGUFLinear
from .kernels import native

QUANT_MODES = ("int8", "int4")
_FP16_ONE = torch.tensor([1.0], dtype=torch.float16).view(torch.uint8)


def _q8_0_unit_blocks(q: torch.Tensor) -> torch.Tensor:
    """int8 [n, k] as Q8_0 bytes whose block scales are all 1."""
    n, k = q.shape
    blocks = torch.empty(n, k // 32, 34, dtype=torch.uint8)
    blocks[..., :2] = _FP16_ONE
    blocks[..., 2:] = q.view(torch.uint8).view(n, k // 32, 32)
    return blocks.view(-1)


def q4_1_blocks(weight: torch.Tensor) -> torch.Tensor:
    """A float weight [n, k] (k a multiple of 32) as GGML Q4_1 bytes: per 32 values, fp16
    scale d = (max - min) / 15 and minimum m, then q = round((w - m) / d) in 0..15."""
    n, k = weight.shape
    groups = weight.float().view(n, k // 32, 32)
    lo, hi = groups.amin(-1), groups.amax(-1)
    d16, m16 = ((hi - lo) / 15).to(torch.float16), lo.to(torch.float16)
    d = d16.float()
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    q = torch.round((groups - m16.float()[..., None]) * inv[..., None]).clamp(0, 15).to(torch.uint8)
    blocks = torch.empty(n, k // 32, 20, dtype=torch.uint8)
    blocks[..., 0:2] = d16.unsqueeze(-1).view(torch.uint8)
    blocks[..., 2:4] = m16.unsqueeze(-1).view(torch.uint8)
    blocks[..., 4:] = q[..., :16] | (q[..., 16:] << 4)
    return blocks.view(-1)


class Int8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        w = weight.float()
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("scales", scales)
        self.out_features, self.in_features = w.shape
        self.blocks = None  # the packed kernel's form; then no separate int8 copy is kept
        if weight.device.type == "cpu" and self.in_features % 32 == 0 and native() is not None:
            self.blocks = GGUFLinear(_q8_0_unit_blocks(q), GGMLType.Q8_0, self.out_features, self.in_features)
        else:
            self.register_buffer("int8_weight", q)

    @property
    def weight(self) -> torch.Tensor:
        """The int8 weight [out, in]."""
        if self.blocks is None:
            return self.int8_weight
        n, k = self.out_features, self.in_features
        return self.blocks.ggml_bytes().view(n, k // 32, 34)[..., 2:].contiguous().view(torch.int8).view(n, k)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, int8 per channel"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.blocks is not None:
            return self.blocks(x) * self.scales
        flat = x.reshape(-1, self.in_features).float()
        if flat.device.type == "cpu":
            y = torch.ops.aten._weight_int8pack_mm(flat, self.int8_weight, self.scales)
        else:
            y = (flat @ self.int8_weight.t().to(flat.dtype)) * self.scales
        return y.view(*x.shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, group_size: int = 32) -> None:
        super().__init__()
        n, k = weight.shape
        if k % group_size:
            raise ValueError(f"in_features {k} is not a multiple of the group size {group_size}")
        groups = weight.float().view(n, k // group_size, group_size)
        lo, hi = groups.amin(-1), groups.amax(-1)
        scales = ((hi - lo) / 15).clamp(min=1e-12)
        q = torch.round((groups - lo[..., None]) / scales[..., None]).clamp(0, 15).to(torch.int32).view(n, k)
        zeros = lo + 8 * scales
        self.group_size = group_size
        self.out_features, self.in_features = n, k
        if weight.device.type == "cpu":
            self.register_buffer("weight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        else:  # plain packing: two quants a byte, low nibble first
            q8 = q.to(torch.uint8).view(n, k // 2, 2)
            self.register_buffer("weight", q8[..., 0] | (q8[..., 1] << 4))
        # [k / group, n, 2]: the layout the kernel takes
        self.register_buffer("scales_and_zeros", torch.stack((scales, zeros), -1).transpose(0, 1).contiguous())

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, int4 groups of {self.group_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()
        if flat.device.type == "cpu":
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.weight, self.group_size, self.scales_and_zeros)
        else:
            y = flat @ self.dequantized().t()
        return y.view(*x.shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        n, k, g = self.out_features, self.in_features, self.group_size
        if self.weight.device.type == "cpu":  # unpack through the kernel: W^T = I @ W^T
            eye = torch.eye(k, dtype=torch.float32)
            return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.weight, g, self.scales_and_zeros).t()
        q = torch.stack((self.weight & 0x0F, self.weight >> 4), -1).view(n, k // g, g).float()
        s, z = self.scales_and_zeros.transpose(0, 1).unbind(-1)
        return ((q - 8) * s[..., None] + z[..., None]).view(n, k)


def quantize_linear(weight: torch.Tensor, mode: str, group_size: int = 32) -> nn.Module:
    """A weight-only quantized layer for a float weight [out, in] (see the module docstring);
    int4 falls back to int8 when the input dimension does not split into groups or (torch's
    int4 packing) the output dimension is not a multiple of 16."""
    if mode == "int8":
        return Int8Linear(weight)
    if mode == "int4":
        n, k = weight.shape
        if group_size == 32 and k % 32 == 0 and weight.device.type == "cpu" and native() is not None:
            return GGUFLinear(q4_1_blocks(weight), GGMLType.Q4_1, n, k)
        if k % group_size == 0 and n % 16 == 0:
            return Int4Linear(weight, group_size)
        return Int8Linear(weight)
    raise ValueError(f"unknown quantization {mode!r}; choose one of {', '.join(QUANT_MODES)}")
