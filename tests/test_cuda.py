"""The same model code on CUDA: float, GGUF-block and int8/int4 layers give the CPU's logits.

Skipped only when no CUDA device is present.
"""

import pytest
import torch

import llamaherd
from tests.hf_models import random_hf_llama, write_gguf_from_hf

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("quantize", [None, "float", "int8", "int4"])
def test_cuda_matches_cpu(tmp_path, quantize):
    hf = random_hf_llama(seed=11, num_attention_heads=4, num_key_value_heads=2, hidden_size=64, intermediate_size=128)
    path = write_gguf_from_hf(hf, tmp_path / "m.gguf", dtype="f16")
    cpu = llamaherd.load(path, quantize=quantize)
    gpu = llamaherd.load(path, quantize=quantize, device="cuda")
    ids = list(range(3, 40))
    a, b = cpu.logits(ids), gpu.logits(ids).cpu()
    tol = 1e-3 if quantize in (None, "float") else 5e-2 * a.abs().max().item()
    assert (a - b).abs().max().item() < tol
    out = gpu.generate("ab", max_tokens=4, temperature=0)
    assert isinstance(out, str)


def test_cuda_batched_cache(tmp_path):
    hf = random_hf_llama(seed=12, num_attention_heads=4, num_key_value_heads=2)
    llm = llamaherd.load(write_gguf_from_hf(hf, tmp_path / "m.gguf"), device="cuda")
    cache = llamaherd.cache.KVCache(llm.config, 2, 32, device="cuda")
    tokens = torch.tensor([[5, 6, 7], [8, 9, 0]], device="cuda")
    with torch.no_grad():
        llm.model(tokens, torch.arange(3, device="cuda").expand(2, -1), cache)
        step = llm.model(torch.tensor([[4], [4]], device="cuda"), torch.tensor([[3], [2]], device="cuda"), cache)
    assert step.shape == (2, 1, llm.config.vocab_size)
