"""Random-weight Hugging Face LLaMA models and an independent HF -> GGUF writer for tests.

The GGUF is written with the `gguf` package's writer, the way llama.cpp's
convert_hf_to_gguf.py does it (q/k rows permuted to the interleaved rotary layout,
Llama-3.1 scaling as a rope_freqs tensor), so llamaherd's reader is checked against
files it did not write.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch


def random_hf_llama(seed: int = 0, **config_kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    defaults = dict(
        vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
    )
    defaults.update(config_kw)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**defaults)).eval()
    with torch.no_grad():  # default init is tiny; widen it so layers matter
        for p in model.parameters():
            p.normal_(0, 0.2) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return model.float()


def hf_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's permute: rotate-half row order back to interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def spm_test_vocab(n: int) -> tuple[list[str], list[float], list[int]]:
    """A small SentencePiece-style vocabulary: unk, bos, eos, 256 byte tokens, then pieces."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [2, 3, 3] + [6] * 256
    letters = "abcdefghijklmnopqrstuvwxyz"
    i = 0
    while len(tokens) < n:
        piece = "▁" + letters[i % 26] + (letters[i // 26 % 26] if i >= 26 else "")
        tokens.append(piece)
        types.append(1)
        i += 1
    tokens, types = tokens[:n], types[:n]
    scores = [0.0] * 3 + [0.0] * 256 + [-float(k) for k in range(len(tokens) - 259)]
    return tokens, scores[:n], types


def write_gguf_from_hf(model, path: Path, dtype: str = "f32") -> Path:
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(head_dim)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_vocab_size(cfg.vocab_size)
    tokens, scores, types = spm_test_vocab(cfg.vocab_size)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def add_weight(name: str, t: np.ndarray) -> None:
        if t.ndim == 1 or dtype == "f32":
            w.add_tensor(name, t.astype(np.float32))
        elif dtype == "f16":
            w.add_tensor(name, t.astype(np.float16))
        else:  # bf16: gguf's own rounding, stored as raw blocks
            w.add_tensor(name, gguf.quants.quantize(t, gguf.GGMLQuantizationType.BF16), raw_dtype=gguf.GGMLQuantizationType.BF16)

    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    names = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    }
    add_weight("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                t = hf_permute(t, cfg.num_attention_heads)
            elif gg == "attn_k":
                t = hf_permute(t, cfg.num_key_value_heads)
            add_weight(f"blk.{i}.{gg}.weight", t)
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not cfg.tie_word_embeddings:
        add_weight("output.weight", sd["lm_head.weight"])
    factors = llama3_rope_factors(model)
    if factors is not None:
        w.add_tensor("rope_freqs.weight", factors)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def llama3_rope_factors(model) -> np.ndarray | None:
    """Per-pair frequency divisors, taken from transformers' own scaled inverse frequencies."""
    rotary = model.model.rotary_emb
    if rotary.rope_type != "llama3":
        return None
    default, _ = rotary.compute_default_rope_parameters(model.config)
    return (default / rotary.inv_freq).float().numpy()
