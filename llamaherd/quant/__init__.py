"""Quantized weights: GGML block types and weight-only quantized linear layers."""
