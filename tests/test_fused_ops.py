"""The native decode-step ops (fused_ops.py on CPU float32) against torch's own ops."""

import math

import pytest
import torch
import torch.nn.functional as F

from llamaherd import fused_ops
from llamaherd.cache import KVCache
from llamaherd.config import ModelConfig
from llamaherd.quant.kernels import native

pytestmark = pytest.mark.skipif(native() is None, reason="no native kernels: fused_ops runs the torch expressions")

# float32 reductions over a few thousand terms in another order: ~1e-6 relative
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1, 2048), (3, 5, 45), (7, 576)])
def test_rms_norm(shape):
    x, w = torch.randn(shape) * 3, torch.randn(shape[-1])
    assert torch.allclose(fused_ops.rms_norm(x, w, 1e-5), F.rms_norm(x, (shape[-1],), w, 1e-5), **TOL)


def test_silu_mul():
    gu = torch.randn(2, 3, 2 * 1536) * 4
    gate, up = gu.chunk(2, -1)
    expected = F.silu(gate) * up
    assert torch.allclose(fused_ops.silu_mul(gu), expected, **TOL)  # halves of one tensor
    assert torch.allclose(fused_ops.silu_mul(gate.clone(), up.clone()), expected, **TOL)  # two tensors
    # columns of a transposed tensor (no unit stride along H) and an empty batch
    g, u = torch.randn(45, 7), torch.randn(45, 7)
    assert torch.allclose(fused_ops.silu_mul(g.t(), u.t()), F.silu(g.t()) * u.t(), **TOL)
    assert fused_ops.silu_mul(torch.empty(0, 8), torch.empty(0, 8)).shape == (0, 8)


def test_silu_mul_at_the_edges_of_exp():
    """Its exp is a polynomial with clamped input: far tails, +inf and NaN as torch gives them
    (in the vector loop and in the scalar tail: 20 values)."""
    gate = torch.tensor([-1e4, -100.0, -87.0, 87.0, 100.0, 1e4, -20.0, float("inf"), float("nan"), 0.0] * 2)
    up = torch.ones_like(gate)
    got, expected = fused_ops.silu_mul(torch.cat([gate, up])), F.silu(gate) * up
    assert torch.allclose(got, expected, atol=1e-30, rtol=1e-6, equal_nan=True)


def reference_attention(q, k, v, rotation, cache_k, cache_v, rows, positions):
    """Rotate with complex numbers, write the cache by indexing, attend with SDPA and a mask."""
    def rotate(x):
        return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * rotation).flatten(-2)

    q, k = rotate(q), rotate(k)
    cache_k[rows, :, positions[:, 0]] = k[:, 0]
    cache_v[rows, :, positions[:, 0]] = v[:, 0]
    span = int(positions.max()) + 1
    keys, values = cache_k[rows, :, :span], cache_v[rows, :, :span]
    mask = (torch.arange(span) <= positions)[:, None, None, :]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask,
                                         scale=1 / math.sqrt(q.shape[-1]), enable_gqa=True)
    return out.transpose(1, 2)


@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 4, 16), (8, 2, 64), (9, 3, 64), (4, 2, 128), (2, 1, 20)])
@pytest.mark.parametrize("span", [40, 1500])  # 1500: enough keys for the native op to use every thread
def test_decode_attention_matches_sdpa(heads, kv_heads, head_dim, span):
    """Batched decode: rows of different lengths, cache rows picked out of order, GQA."""
    cfg = ModelConfig(dim=heads * head_dim, n_layers=2, n_heads=heads, n_kv_heads=kv_heads, vocab_size=10, ffn_dim=8)
    cache = KVCache(cfg, batch_size=4, max_seq_len=span)
    cache.k.normal_()
    cache.v.normal_()
    ref_k, ref_v = cache.k[1].clone(), cache.v[1].clone()
    b = 3
    rows, positions = torch.tensor([2, 0, 3]), torch.tensor([[5], [0], [span - 1]])
    q, k, v = torch.randn(b, 1, heads, head_dim), torch.randn(b, 1, kv_heads, head_dim), torch.randn(b, 1, kv_heads, head_dim)
    angles = positions.unsqueeze(-1) * torch.rand(head_dim // 2) * 0.5
    rotation = torch.polar(torch.ones_like(angles), angles).unsqueeze(2)
    got = fused_ops.decode_attention(q, k, v, rotation, cache, 1, rows, positions)
    expected = reference_attention(q, k, v, rotation, ref_k, ref_v, rows, positions)
    assert torch.allclose(got, expected, **TOL)
    assert torch.allclose(cache.k[1], ref_k, **TOL) and torch.equal(cache.v[1], ref_v)  # same slots written


def test_decode_attention_refuses_positions_outside_the_cache():
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=10, ffn_dim=8)
    cache = KVCache(cfg, batch_size=1, max_seq_len=4)
    q = k = v = torch.randn(1, 1, 2, 16)
    rotation = torch.ones(1, 1, 1, 8, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="out of range"):
        fused_ops.decode_attention(q, k, v, rotation, cache, 0, None, torch.tensor([[4]]))
