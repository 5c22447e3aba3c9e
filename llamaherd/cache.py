"""The KV cache: preallocated keys and values for a batch of sequences.

Each row of the batch is an independent sequence; a token at position p is stored in
slot p of its row, so rows of different lengths share one tensor and one forward pass.
"""

from __future__ import annotations

import torch

from .config import ModelConfig


class KVCache:
    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_seq_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (config.n_layers, batch_size, config.n_kv_heads, max_seq_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor | None, span: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v ([B, T, Hkv, D]) at `positions` ([B, T]) of cache `rows`; return keys and values
        for slots [0, span) of those rows as [B, Hkv, span, D]."""
        k_layer, v_layer = self.k[layer], self.v[layer]
        if rows is None:  # the batch is cache rows 0..B-1: slice, no gather
            b = k.shape[0]
            if k.shape[1] == 1 and b == 1:
                p = int(positions[0, 0])
                k_layer[0, :, p] = k[0, 0]
                v_layer[0, :, p] = v[0, 0]
            else:
                batch_index = torch.arange(b, device=k.device).unsqueeze(1).expand_as(positions)
                k_layer[batch_index, :, positions] = k.to(k_layer.dtype)
                v_layer[batch_index, :, positions] = v.to(v_layer.dtype)
            return k_layer[:b, :, :span], v_layer[:b, :, :span]
        batch_index = rows.unsqueeze(1).expand_as(positions)
        k_layer[batch_index, :, positions] = k.to(k_layer.dtype)
        v_layer[batch_index, :, positions] = v.to(v_layer.dtype)
        return k_layer[rows, :, :span], v_layer[rows, :, :span]
