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

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor | None) -> None:
        """Store k, v ([B, T, Hkv, D]) at `positions` ([B, T]) of cache `rows` (default 0..B-1)."""
        k_layer, v_layer = self.k[layer], self.v[layer]
        if rows is None and k.shape[0] == 1 and k.shape[1] == 1:  # one token of one sequence: plain copies
            p = int(positions[0, 0])
            k_layer[0, :, p] = k[0, 0]
            v_layer[0, :, p] = v[0, 0]
            return
        if rows is None:
            rows = torch.arange(k.shape[0], device=k.device)
        batch_index = rows.unsqueeze(1).expand_as(positions)
        k_layer[batch_index, :, positions] = k.to(k_layer.dtype)
        v_layer[batch_index, :, positions] = v.to(v_layer.dtype)

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor | None, span: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """store(), then the keys and values of slots [0, span) of those rows as [B, Hkv, span, D]."""
        self.store(layer, k, v, positions, rows)
        k_layer, v_layer = self.k[layer], self.v[layer]
        if rows is None:  # the batch is cache rows 0..B-1: a slice, no gather
            return k_layer[: k.shape[0], :, :span], v_layer[: k.shape[0], :, :span]
        return k_layer[rows, :, :span], v_layer[rows, :, :span]
