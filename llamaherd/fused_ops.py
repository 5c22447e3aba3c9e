"""The model's small per-token ops as one native call each (CPU, float32), else torch.

On a CPU a decode step of a small model spends as long dispatching torch's small ops
(several microseconds each, about twenty a layer) as in its matrix products; the native
extension (quant/kernels.py) does each of these in one call. Everywhere else (CUDA, other
dtypes, no compiler) the torch expressions below run; they are the reference the native
ops are tested against.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .cache import KVCache
from .quant.gguf_linear import DECODE_ROWS, GGUFLinear
from .quant.kernels import native


def _native_for(*tensors: torch.Tensor):
    for t in tensors:  # a plain loop over cheap attributes: this runs several times a layer per token
        if not t.is_cpu or t.dtype is not torch.float32:
            return None
    return native()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension, computed in float32."""
    ext = _native_for(x, weight)
    if ext is not None:
        return ext.rms_norm(x, weight, eps)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def silu_mul(gate: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
    """silu(gate) * up. With one argument, gate and up side by side in its last dimension
    ([..., 2H] -> [..., H])."""
    ext = _native_for(gate) if up is None else _native_for(gate, up)
    if ext is not None:
        return ext.silu_mul(gate, up)
    if up is None:
        gate, up = gate.chunk(2, dim=-1)
    return F.silu(gate) * up


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rotation: torch.Tensor, cache: KVCache,
                     layer: int, rows: torch.Tensor | None, positions: torch.Tensor) -> torch.Tensor:
    """A decode step's attention: one new token per sequence.

    Rotates q ([B, 1, H, D]) and k ([B, 1, Hkv, D]) by `rotation` (complex [B, 1, 1, D/2]),
    stores k and v in `cache` at `positions` ([B, 1]) of cache `rows` (default 0..B-1), and
    attends from each q to its own row's slots up to its position. Returns [B, 1, H, D]."""
    ext = _native_for(q, k, v, cache.k)
    if ext is not None:
        return ext.decode_attention(q, k, v, rotation, cache.k, cache.v, layer, rows, positions)
    h = q.shape[2]
    q, k = apply_rotary_emb(q, rotation), apply_rotary_emb(k, rotation)
    span = int(positions.max()) + 1
    keys, values = cache.update(layer, k, v, positions, rows, span)
    visible = torch.arange(span, device=q.device) <= positions  # [B, span]
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), keys.to(q.dtype), values.to(q.dtype), attn_mask=visible[:, None, None, :],
        enable_gqa=keys.shape[1] != h,
    )
    return out.transpose(1, 2)


class DecodePlan(NamedTuple):
    """What decode_block needs of a block: its norms and its packed products."""

    attention_norm: torch.Tensor
    ffn_norm: torch.Tensor
    eps: float
    weights: list[torch.Tensor]  # packed wqkv (or wq, wk, wv where their types differ), wo, w13, w2
    spec: list[int]  # GGML type and out features of each
    x_terms: int  # int8 terms carrying x (GGUFLinear)
    n_heads: int
    n_kv_heads: int


def decode_plan(block) -> DecodePlan | None:
    """A TransformerBlock's decode plan, or None where its parts don't allow one native call:
    w1/w3 fused, q/k/v fused or three products (where their types differ), all of them packed
    GGUF layers (the native kernels, CPU) rounding x alike, float32 norms. Built once by the
    loader: building it costs tens of microseconds, as long as the native call saves."""
    attn, ffn = block.attention, block.feed_forward
    norms = (block.attention_norm, block.ffn_norm)
    projections = (attn.wqkv,) if attn.wqkv is not None else (attn.wq, attn.wk, attn.wv)
    linears = (*projections, attn.wo, ffn.w13, ffn.w2)
    if native() is None or norms[0].eps != norms[1].eps or any(n.weight.dtype is not torch.float32 for n in norms):
        return None
    if not all(isinstance(l, GGUFLinear) and l.packed is not None and l.int8_activations == attn.wo.int8_activations
               for l in linears):
        return None
    return DecodePlan(norms[0].weight, norms[1].weight, norms[0].eps, [l.packed for l in linears],
                      [v for l in linears for v in (l.ggml_type, l.out_features)],
                      1 if attn.wo.int8_activations else 3, attn.n_heads, attn.n_kv_heads)


def decode_block(plan: DecodePlan, x: torch.Tensor, rotation: torch.Tensor, layer: int, positions: torch.Tensor,
                 cache: KVCache, rows: torch.Tensor | None) -> torch.Tensor | None:
    """A TransformerBlock's decode step (x [B, 1, dim]) as one native call by its plan, or
    None where these inputs need the op-by-op path (not float32 on the CPU, more than
    DECODE_ROWS rows). The same kernels in the same order as the block's own forward, without
    Python between them (a small model's decode step spent more time there than in its
    products); tests/test_fast_paths.py checks the two agree bit for bit."""
    ext = _native_for(x, cache.k)
    if ext is None or x.shape[0] > DECODE_ROWS:
        return None
    return ext.decode_block(x, plan.attention_norm, plan.ffn_norm, plan.eps, plan.weights, plan.spec, plan.x_terms,
                            plan.n_heads, plan.n_kv_heads, rotation, cache.k, cache.v, layer, rows, positions)


def apply_rotary_emb(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x ([B, T, H, D]) by unit complex numbers ([B, T, 1, D/2]).

    A pair (x0, x1) is the complex number x0 + i*x1, so the rotation is one complex
    multiply: a single kernel where separate cos/sin arithmetic takes about ten."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)
