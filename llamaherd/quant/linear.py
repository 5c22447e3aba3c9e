"""Weight-only int8 and int4 Linear layers for float checkpoints (`quantize="int8"|"int4"`).

  * Int8Linear: one int8 per weight and one float scale per output channel
    (symmetric, scale = max|w| / 127), computed by torch's `_weight_int8pack_mm`.
  * Int4Linear: 4-bit unsigned quants in groups of `group_size` along the input
    dimension, each group with a scale and a zero point (asymmetric min/max), computed
    by torch's `_weight_int4pack_mm_for_cpu`. Its dequantization convention is
    w = (q - 8) * scale + zero, so zero = min + 8 * scale for q = round((w - min) / scale).

Activations stay float32. Quantization happens per tensor while the model is loaded
(see loader.py), so the float model is never held in full.
"""

from __future__ import annotations

import torch
from torch import nn

QUANT_MODES = ("int8", "int4")


class Int8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        w = weight.float()
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        self.register_buffer("weight", torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales)
        self.out_features, self.in_features = w.shape

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, int8 per channel"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()
        if flat.device.type == "cpu":
            y = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales)
        else:
            y = (flat @ self.weight.t().to(flat.dtype)) * self.scales
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
    """An Int8Linear or Int4Linear for a float weight [out, in]; int4 falls back to int8
    when the input dimension does not split into groups or (the CPU kernel's packing)
    the output dimension is not a multiple of 16."""
    if mode == "int8":
        return Int8Linear(weight)
    if mode == "int4":
        if weight.shape[1] % group_size == 0 and weight.shape[0] % 16 == 0:
            return Int4Linear(weight, group_size)
        return Int8Linear(weight)
    raise ValueError(f"unknown quantization {mode!r}; choose one of {', '.join(QUANT_MODES)}")
