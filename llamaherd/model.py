"""The LLaMA transformer: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.

One model for LLaMA-1/2/3 and llama-architecture models. No file I/O and no sampling
here: `forward(tokens, positions, cache) -> logits`.

Weight names follow Meta's checkpoints (`layers.N.attention.wq.weight`, ...), and the
rows of wq and wk are in Meta's (and GGUF's) rotary layout: dimensions 2i and 2i+1 of
each head form one rotating pair. Readers convert other layouts to this one.

Inside a block, its parts are called through their forward(): nn.Module.__call__ costs
microseconds (7 here), and a small model's decode step made ~270 such calls, 1.9 ms of
SmolLM2-135M's 15.5 ms step. Hooks on the model and on its blocks run; hooks on a block's
parts (norms, attention, feed-forward, linears) do not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import fused_ops
from .cache import KVCache
from .config import ModelConfig, RopeScaling
from .fused_ops import apply_rotary_emb


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_ops.rms_norm(x, self.weight, self.eps)


def rope_frequencies(config: ModelConfig, freq_factors: torch.Tensor | None = None) -> torch.Tensor:
    """Rotation speed of each pair of head dimensions, after any frequency scaling."""
    d = config.head_dim
    # on the CPU even under a meta default device: arange's meta path imports torch._dynamo (seconds)
    freqs = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64, device="cpu") / d))
    scaling = config.rope_scaling
    if freq_factors is not None:  # GGUF ships Llama-3.1 scaling precomputed as rope_freqs
        freqs = freqs / freq_factors.to(torch.float64)
    elif scaling is not None and scaling.kind == "llama3":
        freqs = _llama3_scaled(freqs, scaling)
    elif scaling is not None and scaling.kind == "linear":
        freqs = freqs / scaling.factor
    return freqs


def _llama3_scaled(freqs: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama-3.1 scaling: slow long-wavelength pairs by `factor`, keep short ones, blend between."""
    wavelen = 2 * math.pi / freqs
    low_freq_wavelen = s.original_max_position / s.low_freq_factor
    high_freq_wavelen = s.original_max_position / s.high_freq_factor
    smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * freqs / s.factor + smooth * freqs
    out = torch.where(wavelen > low_freq_wavelen, freqs / s.factor, freqs)
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(medium, blended, out)


MIN_QUERY_CHUNK = 64  # queries per attention call in a long prefill (causal_attention), at least


def causal_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor
) -> torch.Tensor:
    """Attention of q [B, H, T, D] over keys and values [B, Hkv, S, D] (key slot j holds position
    j) under `mask` [B, 1, T, S] (slot j visible to a query at position p when j <= p), the
    queries at `positions` [B, T].

    A long run of queries goes in chunks of about T / 8, each over the slots up to its last
    position only: the slots after it are masked for all its queries, so the result is the
    same, but torch's CPU kernel skips masked keys only in blocks of 512 and would compute
    them (TinyLlama shapes, 2 threads: a 512-token prompt's attention 16.8 -> 11.7 ms a layer,
    2048 tokens 269 -> 157 ms)."""
    t = q.shape[2]
    gqa = keys.shape[1] != q.shape[1]
    if mask is None or t < 2 * MIN_QUERY_CHUNK:
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=gqa)
    size = max(MIN_QUERY_CHUNK, -(-t // 8))
    latest = positions.amax(dim=0).tolist()  # each query column's latest position over the rows
    outs = []
    for c0 in range(0, t, size):
        c1 = min(c0 + size, t)
        end = min(max(latest[c0:c1]) + 1, keys.shape[2])  # the slots any of the chunk's queries sees
        outs.append(F.scaled_dot_product_attention(
            q[:, :, c0:c1], keys[:, :, :end], values[:, :, :end], attn_mask=mask[:, :, c0:c1, :end], enable_gqa=gqa,
        ))
    return torch.cat(outs, dim=2)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)
        self.wqkv: nn.Module | None = None  # see fuse()

    def fuse(self, wqkv: nn.Module) -> None:
        """Compute q, k and v with one layer whose output is theirs side by side (a loader's choice)."""
        self.wqkv = wqkv
        self.wq = self.wk = self.wv = None

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.wqkv is None:
            return self.wq.forward(x), self.wk.forward(x), self.wv.forward(x)
        kv = self.n_kv_heads * self.head_dim
        return self.wqkv.forward(x).split_with_sizes((self.n_heads * self.head_dim, kv, kv), dim=-1)  # not split(): its Python wrapper costs ~10 us

    def forward(
        self,
        x: torch.Tensor,
        rotation: torch.Tensor,
        mask: torch.Tensor | None,
        layer: int,
        positions: torch.Tensor,
        cache: KVCache | None,
        rows: torch.Tensor | None,
        span: int,
        last_query: bool = False,
    ) -> torch.Tensor:
        """The attention output for every position of x, or with last_query for its last one only
        (keys and values still come from, and go to the cache for, all of them)."""
        b, t, _ = x.shape
        q, k, v = self.project(x)
        q = q.view(b, t, self.n_heads, self.head_dim)
        k = k.view(b, t, self.n_kv_heads, self.head_dim)
        v = v.view(b, t, self.n_kv_heads, self.head_dim)
        if cache is not None and t == 1:  # decoding: each row's new token against its own cached slots
            out = fused_ops.decode_attention(q, k, v, rotation, cache, layer, rows, positions)
            return self.wo.forward(out.reshape(b, 1, self.n_heads * self.head_dim))
        k = apply_rotary_emb(k, rotation)
        if last_query and t > 1:
            q, rotation, t = q[:, -1:], rotation[:, -1:], 1
            mask = None if mask is None else mask[:, :, -1:]
        q = apply_rotary_emb(q, rotation)
        if cache is not None:
            keys, values = cache.update(layer, k, v, positions, rows, span)
        else:
            keys, values = k.transpose(1, 2), v.transpose(1, 2)
        out = causal_attention(q.transpose(1, 2), keys.to(q.dtype), values.to(q.dtype), mask, positions[:, -t:])
        return self.wo.forward(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        self.w13: nn.Module | None = None  # see fuse()

    def fuse(self, w13: nn.Module) -> None:
        """Compute w1 and w3 with one layer whose output is theirs side by side (a loader's choice)."""
        self.w13 = w13
        self.w1 = self.w3 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w13 is None:
            return self.w2.forward(fused_ops.silu_mul(self.w1.forward(x), self.w3.forward(x)))
        return self.w2.forward(fused_ops.silu_mul(self.w13.forward(x)))


class TransformerBlock(nn.Module):
    # set by a loader once the block's parts are final (fused_ops.decode_plan): its decode
    # steps then run as one native call; replacing its parts afterwards needs a new plan
    decode_plan: fused_ops.DecodePlan | None = None

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config.dim, config.ffn_dim)
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)

    def forward(self, x: torch.Tensor, *attn_args: object, last_only: bool = False) -> torch.Tensor:
        """x [B, T, dim] through the block; with last_only, only the last position comes out: the
        model's last block when only the last logits are wanted (llama.cpp does the same), so its
        feed-forward, the bulk of a block, runs on one row instead of T."""
        rotation, _, layer, positions, cache, rows, _ = attn_args
        if self.decode_plan is not None and cache is not None and x.shape[1] == 1:  # decoding: one native call
            out = fused_ops.decode_block(self.decode_plan, x, rotation, layer, positions, cache, rows)
            if out is not None:
                return out
        h = (x[:, -1:] if last_only else x) + self.attention.forward(self.attention_norm.forward(x), *attn_args, last_query=last_only)
        return h + self.feed_forward.forward(self.ffn_norm.forward(h))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig, freq_factors: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        # On the meta device (the loader's way) skip the random init: Embedding's normal_ on meta
        # tensors imports torch._dynamo, seconds of every start.
        skip_init = torch.get_default_device().type == "meta"
        self.tok_embeddings = nn.Embedding(
            config.vocab_size, config.dim, _weight=torch.empty(config.vocab_size, config.dim) if skip_init else None
        )
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = None if config.tie_embeddings else nn.Linear(config.dim, config.vocab_size, bias=False)
        # float64 frequencies: angles for positions in the 100k range stay exact to float32.
        self.register_buffer("rope_freqs", rope_frequencies(config, freq_factors), persistent=False)

    def rotary_angles(self, positions: torch.Tensor) -> torch.Tensor:
        """The rotation of each pair of head dimensions at `positions` ([B, T]): complex [B, T, 1, D/2]."""
        angles = (positions.to(torch.float64).unsqueeze(-1) * self.rope_freqs.to(positions.device)).float()
        return torch.polar(torch.ones_like(angles), angles).unsqueeze(2)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        rows: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (float32, [B, T, vocab], or [B, 1, vocab] with last_only) for tokens [B, T] at positions [B, T].

        With a cache, each row's keys and values are stored at its positions and every
        query attends to the slots up to its own position. `rows` picks cache rows for
        the batch (default: rows 0..B-1).
        """
        b, t = tokens.shape
        if positions is None:
            positions = torch.arange(t, device=tokens.device).expand(b, t)
        span = int(positions.max()) + 1
        if cache is not None and span > cache.max_seq_len:
            raise ValueError(f"position {span - 1} is beyond the cache length {cache.max_seq_len}")
        # decoding with a cache (t == 1) needs no mask: each row sees its own slots up to its position
        mask = None if cache is not None and t == 1 else self._attention_mask(positions, span if cache is not None else t)
        rotation = self.rotary_angles(positions)
        h = self.tok_embeddings(tokens)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h, rotation, mask, i, positions, cache, rows, span, last_only=last_only and i == last)
        if last_only:
            h = h[:, -1:]
        h = self.norm(h)
        if self.output is None:  # tied embeddings: the output layer reuses the token table
            return F.linear(h, self.tok_embeddings.weight).float()
        return self.output(h).float()

    @staticmethod
    def _attention_mask(positions: torch.Tensor, n_keys: int) -> torch.Tensor | None:
        """Boolean [B, 1, T, n_keys]: key slot j is visible to a query at position p when j <= p."""
        if positions.shape[1] == 1 and bool((positions == n_keys - 1).all()):
            return None  # one new token per row, all at the last slot: everything is visible
        keys = torch.arange(n_keys, device=positions.device)
        return (keys.view(1, 1, 1, -1) <= positions.unsqueeze(1).unsqueeze(-1))
