"""`convert`: Meta -> safetensors -> GGUF round trips give the same logits, and the GGUF
loads in llama.cpp (llama-cpp-python, when installed) with the same greedy tokens."""

from __future__ import annotations

import pytest
import torch

import llamaherd
from llamaherd.cli import main
from llamaherd.convert import convert
from tests.checkpoints import tiny_params, write_meta_checkpoint

IDS = list(range(3, 60))


@pytest.fixture(scope="module")
def meta_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    return write_meta_checkpoint(root / "meta", tiny_params(n_heads=8, n_kv_heads=2, vocab_size=1000), n_shards=2,
                                 dtype=torch.float16)


def test_meta_to_safetensors_to_gguf_f32_round_trip(meta_dir, tmp_path):
    st = convert(meta_dir, tmp_path / "st", to="safetensors", out_type="f32")
    gguf = convert(st, tmp_path / "m.gguf", to="gguf", out_type="f32")
    reference = llamaherd.load(meta_dir).logits(IDS)
    for path in (st, gguf):
        assert (llamaherd.load(path).logits(IDS) - reference).abs().max().item() < 1e-5
    a, b = llamaherd.load(meta_dir).tokenizer, llamaherd.load(gguf).tokenizer
    text = "It was the best of times, it was the worst of times."
    assert a.encode(text) == b.encode(text)


def test_safetensors_output_loads_in_transformers(meta_dir, tmp_path):
    from transformers import LlamaForCausalLM

    st = convert(meta_dir, tmp_path / "st", to="safetensors", out_type="f32")
    hf = LlamaForCausalLM.from_pretrained(st, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = hf(torch.tensor([IDS])).logits[0]
    assert (llamaherd.load(meta_dir).logits(IDS) - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("kind,tolerance", [("f16", 1e-2), ("bf16", 0.3), ("q8_0", 1.0)])
def test_gguf_types(meta_dir, tmp_path, kind, tolerance):
    out = tmp_path / f"m-{kind}.gguf"
    assert main(["convert", str(meta_dir), str(out), "--to", "gguf", "--type", kind, "-q"]) == 0
    got = llamaherd.load(out).logits(IDS)
    assert (got - llamaherd.load(meta_dir).logits(IDS)).abs().max().item() < tolerance


def test_llama_cpp_loads_the_gguf_and_agrees(meta_dir, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    gguf = convert(meta_dir, tmp_path / "m.gguf", to="gguf", out_type="f32")
    llm = llamaherd.load(gguf)
    prompt = llm.tokenizer.encode("Botchan went to Shikoku", add_bos=True)
    ours = []
    ids = list(prompt)
    for _ in range(12):
        nxt = int(llm.logits(ids)[-1].argmax())
        ours.append(nxt)
        ids.append(nxt)
    cpp = llama_cpp.Llama(model_path=str(gguf), n_ctx=128, verbose=False, logits_all=False)
    theirs = []
    cpp.eval(prompt)
    for _ in range(12):
        token = cpp.sample(temp=0.0, top_k=1)
        theirs.append(int(token))
        cpp.eval([token])
    assert theirs == ours
