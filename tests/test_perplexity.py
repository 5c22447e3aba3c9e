"""Perplexity with llama.cpp's method on a tiny random model, checked against a direct computation."""

import math

import torch

import llamaherd
from llamaherd.cli import main as cli_main
from llamaherd.eval import perplexity, perplexity_of_tokens
from tests.hf_models import random_hf_llama, write_gguf_from_hf


def reference_ppl(model, tokens, ctx, bos):
    """Independent: every window from scratch, score offsets [ctx/2, ctx-1) with float64 softmax."""
    nll, n = 0.0, 0
    for w in range(len(tokens) // ctx):
        window = list(tokens[w * ctx : (w + 1) * ctx])
        if bos is not None:
            window[0] = bos
        with torch.no_grad():
            logits = model(torch.tensor([window]))[0].double()
        for j in range(ctx // 2, ctx - 1):
            nll -= torch.log_softmax(logits[j], -1)[window[j + 1]].item()
            n += 1
    return math.exp(nll / n), n


def test_matches_direct_computation(tmp_path):
    hf = random_hf_llama(seed=7, num_attention_heads=4, num_key_value_heads=2)
    llm = llamaherd.load(write_gguf_from_hf(hf, tmp_path / "m.gguf"))
    tokens = torch.randint(3, 300, (170,), generator=torch.Generator().manual_seed(0)).tolist()
    for bos in (None, 1):
        r = perplexity_of_tokens(llm.model, tokens, ctx=32, bos_id=bos)
        expected, n = reference_ppl(llm.model, tokens, 32, bos)
        assert r.n_windows == 5 and r.n_scored == n == 5 * 15  # the partial 6th window is dropped
        assert abs(r.perplexity - expected) < 1e-6 * expected


def test_text_and_cli(tmp_path, capsys):
    hf = random_hf_llama(seed=8, num_attention_heads=4, num_key_value_heads=2)
    path = write_gguf_from_hf(hf, tmp_path / "m.gguf")
    text = "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 20
    (tmp_path / "t.txt").write_text(text)
    llm = llamaherd.load(path)
    r = perplexity(llm, text, ctx=64)
    assert r.n_windows >= 2 and r.perplexity > 1
    assert cli_main(["perplexity", "-m", str(path), str(tmp_path / "t.txt"), "--ctx", "64"]) == 0
    out = capsys.readouterr()
    assert f"perplexity {r.perplexity:.4f}" in out.out
    assert "windows" in out.err  # the progress bar


def test_bench_cli(tmp_path, capsys):
    hf = random_hf_llama(seed=9, num_attention_heads=4, num_key_value_heads=2)
    path = write_gguf_from_hf(hf, tmp_path / "m.gguf")
    assert cli_main(["bench", "-m", str(path), "--prompt-tokens", "16", "--gen-tokens", "4", "--batch", "1", "2"]) == 0
    out = capsys.readouterr().out
    for word in ("load:", "prefill:", "decode:", "batch 2", "peak memory:"):
        assert word in out
