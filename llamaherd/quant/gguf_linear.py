"""Linear and Embedding layers whose weights stay in a GGUF file's own bytes.

The weight is a zero-copy uint8 view of the memory-mapped file: nothing is decoded at
load time, and resident memory is the file's pages. Products are computed

  * for a few rows of input (decode, batched decode): by the native kernel, which
    decodes each 32-value block in registers and multiplies it with every input row;
  * for many rows (prefill, perplexity): by decoding a run of weight rows to float32 into
    a reused scratch buffer and calling BLAS on it, a run at a time;
  * without the native kernels (no compiler, not x86-64 AVX2, CUDA): by the same
    run-at-a-time decoding with the torch decoder in ggml_dequant.

Every path computes x @ dequantize(W)^T in float32, so they agree with the plain float
model up to the order of float additions, with one exception: Q4_0 weights with a few
input rows (decode) take llama.cpp's route, rounding each 32-value block of x to int8
with its own scale (x ~ d * q, |error| <= d / 2) and multiplying in integers (AVX2
maddubs), about 3x less work per weight than decoding to float. Each row of x is
rounded on its own, so batching rows together does not change any row's result.
"""

from __future__ import annotations

import torch
from torch import nn

from .ggml_dequant import dequantize
from .ggml_types import BLOCK_GEOMETRY, GGMLType
from .kernels import native

# Types the native kernel multiplies directly; other block types (k-quants) are decoded a run at a time.
NATIVE_TYPES = frozenset({GGMLType.F16, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q8_0})
DECODE_ROWS = 8  # up to this many input rows go through the block kernel; more go through BLAS
SCRATCH_BYTES = 8 << 20  # decoded weight run for the BLAS path

_scratch: dict[torch.device, torch.Tensor] = {}


def _scratch_buffer(numel: int, device: torch.device) -> torch.Tensor:
    buf = _scratch.get(device)
    if buf is None or buf.numel() < numel:
        buf = _scratch[device] = torch.empty(numel, dtype=torch.float32, device=device)
    return buf[:numel]


def row_bytes(ggml_type: int, row_len: int) -> int:
    block_elems, block_bytes = BLOCK_GEOMETRY[GGMLType(ggml_type)]
    return row_len // block_elems * block_bytes


class GGUFLinear(nn.Module):
    """y = x @ W^T with W ([out_features, in_features]) kept as GGML blocks."""

    def __init__(self, raw: torch.Tensor, ggml_type: int, out_features: int, in_features: int) -> None:
        super().__init__()
        if raw.numel() != out_features * row_bytes(ggml_type, in_features):
            raise ValueError(f"{raw.numel()} bytes do not hold a {GGMLType(ggml_type).name} [{out_features}, {in_features}] weight")
        self.register_buffer("raw", raw, persistent=False)
        self.ggml_type = int(ggml_type)
        self.out_features = out_features
        self.in_features = in_features

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {GGMLType(self.ggml_type).name}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()
        ext = native() if self.raw.device.type == "cpu" else None
        if ext is not None and self.ggml_type in NATIVE_TYPES and flat.shape[0] <= DECODE_ROWS:
            y = ext.gemm(flat, self.raw, self.ggml_type, self.out_features)
        else:
            y = self._blas(flat, ext)
        return y.view(*x.shape[:-1], self.out_features)

    def _blas(self, flat: torch.Tensor, ext) -> torch.Tensor:
        n, k = self.out_features, self.in_features
        y = torch.empty(flat.shape[0], n, dtype=torch.float32, device=flat.device)
        run = max(1, min(n, SCRATCH_BYTES // (4 * k)))
        rb = row_bytes(self.ggml_type, k)
        for r0 in range(0, n, run):
            r1 = min(n, r0 + run)
            if ext is not None and self.ggml_type in NATIVE_TYPES:
                w = _scratch_buffer((r1 - r0) * k, flat.device).view(r1 - r0, k)
                ext.dequant(self.raw, self.ggml_type, n, k, r0, r1, w)
            else:
                w = dequantize(self.raw[r0 * rb : r1 * rb], self.ggml_type, (r1 - r0, k))
            if r1 - r0 == n:
                torch.mm(flat, w.t(), out=y)
            else:
                y[:, r0:r1] = flat @ w.t()
        return y

    def dequantized(self) -> torch.Tensor:
        return dequantize(self.raw, self.ggml_type, (self.out_features, self.in_features))


class GGUFEmbedding(nn.Module):
    """Token embeddings kept as GGML blocks: only the rows looked up are decoded."""

    def __init__(self, raw: torch.Tensor, ggml_type: int, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.rb = row_bytes(ggml_type, embedding_dim)
        self.register_buffer("raw", raw, persistent=False)
        self.ggml_type = int(ggml_type)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self._meta = torch.empty(0, dtype=torch.float32, device=raw.device)

    @property
    def weight(self) -> torch.Tensor:
        """A 0-element float32 tensor: callers read `.weight.device` and `.weight.dtype` off it."""
        return self._meta

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {GGMLType(self.ggml_type).name}"

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        rows = self.raw.view(self.num_embeddings, self.rb)[tokens.reshape(-1)]
        out = dequantize(rows.reshape(-1), self.ggml_type, (rows.shape[0], self.embedding_dim))
        return out.to(tokens.device).view(*tokens.shape, self.embedding_dim)
