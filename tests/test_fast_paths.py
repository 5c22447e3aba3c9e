"""The fast paths give the plain float path's answers (SmolLM2-135M, Q4_1 GGUF).

"plain" is `quantize="float"`: every weight dequantized to float32 and multiplied by
torch. "fast" is the default: the file's Q4_1/Q8_0 blocks multiplied in place by the
native kernel (decode) or decoded a run at a time for BLAS (prefill). Both compute
x @ dequantize(W)^T in float32 from bit-identical dequantized weights (checked in
test_quant.py); only the order of float additions differs. A float32 dot product of
K <= 1536 terms then differs by about sqrt(K) * 2^-24 ~ 2e-6 relative; 30 layers of
residual updates and normalisation keep that in the 1e-5..1e-4 range on logits of size
~20, so 1e-3 leaves a wide margin while any real decoding error (a wrong scale, a wrong
nibble order) moves logits by far more than 1e-1.
"""

import pytest
import torch

import llamaherd
from llamaherd.cache import KVCache
from llamaherd.generate import SamplingParams, generate_tokens
from llamaherd.quant.gguf_linear import GGUFLinear

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]
LOGIT_TOL = 1e-3


@pytest.fixture(scope="module")
def paths(smollm2_path):
    return llamaherd.load(smollm2_path), llamaherd.load(smollm2_path, quantize="float")


def test_default_path_keeps_blocks(paths):
    fast, plain = paths
    assert isinstance(fast.model.layers[0].feed_forward.w1, GGUFLinear)
    assert isinstance(fast.model.output, GGUFLinear)  # tied output on the Q8_0 embedding bytes
    assert not any(isinstance(m, GGUFLinear) for m in plain.model.modules())


def test_prefill_and_decode_logits_agree(paths):
    fast, plain = paths
    ids = fast.tokenizer.encode(PROMPTS[2])
    outs = []
    for llm in paths:
        cache = KVCache(llm.config, 1, 64)
        with torch.inference_mode():
            steps = [llm.model(torch.tensor([ids]), torch.arange(len(ids)).unsqueeze(0), cache)[0]]
            for p, t in enumerate([5, 77, 1234, 3], start=len(ids)):
                steps.append(llm.model(torch.tensor([[t]]), torch.tensor([[p]]), cache)[0])
        outs.append(torch.cat(steps))
    assert (outs[0] - outs[1]).abs().max().item() < LOGIT_TOL


@pytest.mark.parametrize("prompt", PROMPTS)
def test_same_greedy_tokens(paths, prompt):
    greedy = SamplingParams(temperature=0)
    runs = []
    for llm in paths:
        ids = llm.tokenizer.encode(prompt)
        runs.append(list(generate_tokens(llm.model, ids, 64, greedy)))
    assert len(runs[0]) == 64
    assert runs[0] == runs[1]
