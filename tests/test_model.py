"""llamaherd's transformer against Hugging Face transformers' LlamaForCausalLM.

Random-weight HF models are written to GGUF F32 by the `gguf` package's writer and
loaded by llamaherd.load; logits for the same ids must agree within 1e-4.
"""

import pytest
import torch

import llamaherd
from tests.hf_models import random_hf_llama, write_gguf_from_hf

LLAMA31_SCALING = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
}

SHAPES = {
    "mha": dict(),
    "gqa": dict(num_attention_heads=8, num_key_value_heads=2),
    "tied": dict(tie_word_embeddings=True, num_key_value_heads=2),
    "llama31-rope": dict(rope_theta=500000.0, rope_scaling=LLAMA31_SCALING, max_position_embeddings=16384,
                         num_key_value_heads=1),
    # hidden size 45 is odd; heads are 16 wide, so q/k/v project 45 -> 48 (3 heads)
    "odd-hidden": dict(hidden_size=45, head_dim=16, num_attention_heads=3, num_key_value_heads=1, intermediate_size=97),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_logits_match_transformers(tmp_path, shape):
    hf = random_hf_llama(seed=len(shape), **SHAPES[shape])
    path = write_gguf_from_hf(hf, tmp_path / f"{shape}.gguf")
    llm = llamaherd.load(path)
    ids = torch.randint(0, hf.config.vocab_size, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0]
    got = llm.logits(ids)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4


def test_incremental_decode_matches_full_forward(tmp_path):
    """Prefill + one-token steps through the KV cache give the full pass's logits."""
    hf = random_hf_llama(seed=3, num_attention_heads=8, num_key_value_heads=2)
    llm = llamaherd.load(write_gguf_from_hf(hf, tmp_path / "m.gguf"))
    ids = list(range(5, 30))
    full = llm.logits(ids)
    cache = llamaherd.cache.KVCache(llm.config, 1, 64)
    model = llm.model
    with torch.no_grad():
        steps = [model(torch.tensor([ids[:10]]), torch.arange(10).unsqueeze(0), cache)[0]]
        for p in range(10, len(ids)):
            steps.append(model(torch.tensor([[ids[p]]]), torch.tensor([[p]]), cache)[0])
    assert (torch.cat(steps) - full).abs().max().item() < 1e-4



def test_last_only_prefill_gives_the_last_logits_and_fills_the_cache(tmp_path):
    """last_only (what generation asks of a prefill) runs the last block's query, output
    projection and feed-forward for the last position alone: its logits are still
    transformers' for that position, and the cache still gets every position's keys and
    values, so the next step's logits match too."""
    hf = random_hf_llama(seed=5, num_attention_heads=8, num_key_value_heads=2)
    llm = llamaherd.load(write_gguf_from_hf(hf, tmp_path / "m.gguf"))
    ids = list(range(7, 31))
    n = len(ids) - 1
    model = llm.model
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0]
        no_cache = model(torch.tensor([ids[:n]]), last_only=True)
        cache = llamaherd.cache.KVCache(llm.config, 1, 64)
        prefill = model(torch.tensor([ids[:n]]), torch.arange(n).unsqueeze(0), cache, last_only=True)
        step = model(torch.tensor([[ids[n]]]), torch.tensor([[n]]), cache)
    assert no_cache.shape == prefill.shape == (1, 1, hf.config.vocab_size)
    for got, want in ((no_cache[0, 0], expected[n - 1]), (prefill[0, 0], expected[n - 1]), (step[0, 0], expected[n])):
        assert (got - want).abs().max().item() < 1e-4

def test_batched_rows_of_different_lengths_match_single_runs(tmp_path):
    """Two sequences in one batch, at different positions, give their own single-run logits."""
    hf = random_hf_llama(seed=4, num_attention_heads=4, num_key_value_heads=2)
    llm = llamaherd.load(write_gguf_from_hf(hf, tmp_path / "m.gguf"))
    a, b = list(range(10, 22)), list(range(40, 47))
    cache = llamaherd.cache.KVCache(llm.config, 2, 32)
    model = llm.model
    with torch.no_grad():
        # prefill both, b padded at the end (pad slots lie beyond b's positions and are overwritten later)
        tokens = torch.tensor([a[:-1], b[:-1] + [0] * (len(a) - len(b))])
        positions = torch.arange(len(a) - 1).expand(2, -1)
        model(tokens, positions, cache)
        step = model(torch.tensor([[a[-1]], [b[-1]]]), torch.tensor([[len(a) - 1], [len(b) - 1]]), cache)
    assert (step[0, 0] - llm.logits(a)[-1]).abs().max().item() < 1e-4
    assert (step[1, 0] - llm.logits(b)[-1]).abs().max().item() < 1e-4



def test_long_runs_of_queries_match_transformers(tmp_path):
    """Runs of 128 or more queries attend in chunks, each over the key slots up to its latest
    position (model.causal_attention): one long prompt, and two rows at different positions
    stepped 200 tokens at once through the cache, give transformers' logits."""
    hf = random_hf_llama(seed=7, num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512)
    llm = llamaherd.load(write_gguf_from_hf(hf, tmp_path / "m.gguf"))
    gen = torch.Generator().manual_seed(2)
    a, b = (torch.randint(0, hf.config.vocab_size, (n,), generator=gen).tolist() for n in (250, 200))
    with torch.no_grad():
        want_a, want_b = (hf(torch.tensor([ids])).logits[0] for ids in (a, b))
        assert (llm.logits(a) - want_a).abs().max().item() < 1e-4
        cache = llamaherd.cache.KVCache(llm.config, 2, 256)
        llm.model(torch.tensor([a[:50]]), torch.arange(50).unsqueeze(0), cache, rows=torch.tensor([0]))
        both = llm.model(torch.tensor([a[50:], b]), torch.stack([torch.arange(50, 250), torch.arange(200)]), cache)
    assert (both[0] - want_a[50:]).abs().max().item() < 1e-4
    assert (both[1] - want_b).abs().max().item() < 1e-4

def test_block_hooks_see_transformers_hidden_states(tmp_path):
    """Forward hooks on the blocks run (the model calls its blocks through nn.Module, their
    parts through forward()): block i's output is transformers' hidden state i + 1."""
    hf = random_hf_llama(seed=6, num_attention_heads=4, num_key_value_heads=2)
    llm = llamaherd.load(write_gguf_from_hf(hf, tmp_path / "m.gguf"))
    seen = {}
    handles = [block.register_forward_hook(lambda mod, args, out, i=i: seen.__setitem__(i, out.detach().clone()))
               for i, block in enumerate(llm.model.layers)]
    ids = list(range(3, 20))
    llm.logits(ids)
    for h in handles:
        h.remove()
    with torch.no_grad():
        hidden = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states
    assert sorted(seen) == list(range(len(llm.model.layers)))
    for i in range(len(llm.model.layers) - 1):  # the last of transformers' is after the final norm
        assert (seen[i][0] - hidden[i + 1][0]).abs().max().item() < 1e-4
