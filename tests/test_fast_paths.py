"""The fast paths give the plain float path's answers (SmolLM2-135M, Q4_1 GGUF).

"plain" is `quantize="float"`: every weight dequantized to float32 and multiplied by
torch, with torch's own attention and normalisation. "fast" is the default: the file's
Q4_1/Q8_0 blocks repacked and multiplied in integers by the native kernels, q/k/v and
w1/w3 fused, and each block's decode step one native call (norms, products, attention, SwiGLU).

Weight bytes and integer products are exact (test_quant.py); activations enter the integer
products as three int8 terms, within 2^-22 of each 32-value block's largest value, about
float32's own rounding. So, as for any reordering of float sums, a float32 dot product of
K <= 1536 terms differs by ~sqrt(K) * 2^-24 relative; 30 layers of residual updates and
normalisation keep that in the 1e-5..1e-4 range on logits of size ~20 (measured 6.5e-5),
so 1e-3 leaves a wide margin, while a real error (a wrong scale, nibble order or rotation)
moves logits by more than 1e-1. (llama.cpp's single int8 rounding of activations,
`int8_activations=True`, moves them by ~1 and changes the greedy text of all three prompts.)
"""

import pytest
import torch

import llamaherd
from llamaherd import fused_ops
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
    assert isinstance(fast.model.layers[0].feed_forward.w2, GGUFLinear)
    assert isinstance(fast.model.output, GGUFLinear)  # tied output on the Q8_0 embedding bytes
    if fast.model.output.packed is not None:  # native kernels: fused projections
        assert isinstance(fast.model.layers[0].feed_forward.w13, GGUFLinear)
        assert isinstance(fast.model.layers[0].attention.wqkv, GGUFLinear)
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


def test_int8_activations_is_llama_cpps_rounding(smollm2_path, paths):
    """load(..., int8_activations=True) reaches every packed layer and rounds x once: its
    logits equal the float model's on x rounded to int8 blocks only up to that rounding
    (measured ~1 on SmolLM2), far from the default's 1e-3 and far from a broken model."""
    fast, plain = paths
    llm8 = llamaherd.load(smollm2_path, int8_activations=True)
    layers = [m for m in llm8.model.modules() if isinstance(m, GGUFLinear) and m.packed is not None]
    if not layers:
        pytest.skip("no native kernels")
    assert all(m.int8_activations for m in layers)
    ids = fast.tokenizer.encode(PROMPTS[2])
    a, b = llm8.logits(ids), plain.logits(ids)
    assert 1e-2 < (a - b).abs().max().item() < 5
    assert (a.argmax(-1) == b.argmax(-1)).float().mean().item() > 0.8


@pytest.mark.parametrize("int8_activations", [False, True])
def test_decode_block_is_the_block_op_by_op(smollm2_path, int8_activations):
    """A block's decode step as one native call (its decode_plan) gives the op-by-op block's
    logits bit for bit: the same kernels in the same order. Three rows at different
    positions, in cache rows 2, 0 and 1 of 4, so rows and positions are read per row."""
    llm = llamaherd.load(smollm2_path, int8_activations=int8_activations)
    blocks = llm.model.layers
    if blocks[0].decode_plan is None:
        pytest.skip("no native kernels")
    plans = [b.decode_plan for b in blocks]
    assert plans[0].x_terms == (1 if int8_activations else 3)  # the layers' activation rounding
    cache = KVCache(llm.config, 4, 64)
    rows = torch.tensor([2, 0, 1])
    ids = torch.randint(0, llm.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        llm.model(ids, torch.arange(12).expand(3, -1), cache, rows=rows)
        step = (torch.tensor([[7], [8], [9]]), torch.tensor([[12], [9], [5]]), cache)
        fused = llm.model(*step, rows=rows)
        for b in blocks:
            b.decode_plan = None
        op_by_op = llm.model(*step, rows=rows)
        x, positions = torch.randn(3, 1, llm.config.dim), step[1]
        ran = fused_ops.decode_block(plans[0], x, llm.model.rotary_angles(positions), 0, positions, cache, rows)
    assert ran is not None and ran.shape == x.shape  # these inputs took the native block
    assert torch.equal(fused, op_by_op)


def test_decode_block_with_q_k_v_apart(smollm2_path):
    """Where q, k and v can't share one product (a Q4_K_M file's v is Q6_K in some layers),
    the native block takes them as three: the same logits, bit for bit, as the op-by-op
    block and as the fused product."""
    llm = llamaherd.load(smollm2_path)
    blocks = llm.model.layers
    if blocks[0].decode_plan is None:
        pytest.skip("no native kernels")
    cache = KVCache(llm.config, 2, 32)
    ids = torch.randint(0, llm.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    step = (torch.tensor([[7], [8]]), torch.tensor([[6], [6]]), cache)
    with torch.inference_mode():
        llm.model(ids, torch.arange(6).expand(2, -1), cache)
        fused = llm.model(*step)
        for b in blocks:  # the fused q/k/v product cut back into three packed layers
            attn, fused_qkv = b.attention, b.attention.wqkv
            sizes = [attn.n_heads * attn.head_dim] + 2 * [attn.n_kv_heads * attn.head_dim]
            raw = fused_qkv.ggml_bytes()
            rows = raw.split([n * raw.numel() // fused_qkv.out_features for n in sizes])
            attn.wq, attn.wk, attn.wv = (GGUFLinear(r.clone(), fused_qkv.ggml_type, n, fused_qkv.in_features) for r, n in zip(rows, sizes))
            attn.wqkv = None
            b.decode_plan = fused_ops.decode_plan(b)
        assert all(len(b.decode_plan.weights) == 6 for b in blocks)
        apart = llm.model(*step)
        for b in blocks:
            b.decode_plan = None
        op_by_op = llm.model(*step)
    assert torch.equal(apart, op_by_op)
    assert torch.equal(apart, fused)
