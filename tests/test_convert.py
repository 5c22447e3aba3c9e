"""`convert`: Meta -> safetensors -> GGUF round trips give the same logits, the GGUF
loads in llama.cpp (llama-cpp-python, when installed) with the same greedy tokens, and a
GGUF's tokenizer leaves as files that the reference libraries encode as llama.cpp does."""

from __future__ import annotations

import json

import pytest
import torch

import llamaherd
from llamaherd.cli import main
from llamaherd.convert import convert
from llamaherd.formats.gguf import GGUFFile
from llamaherd.tokenizer import tokenizer_from_gguf
from llamaherd.tokenizer.export import write_tokenizer_files
from llamaherd.tokenizer.files import tokenizer_from_dir
from tests.checkpoints import tiny_params, write_meta_checkpoint
from tests.test_tokenizer import read_vectors

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


@pytest.mark.parametrize("name", ["spm", "bpe"])
def test_gguf_tokenizer_written_as_files_encodes_llama_cpp_vectors(assets, tmp_path, name):
    """The files are read back by the libraries that define them (sentencepiece for
    tokenizer.model, tokenizers and transformers for tokenizer.json): all 46 of llama.cpp's
    test vectors give llama.cpp's tokens."""
    vocab = assets / "tokenizer-vectors" / f"ggml-vocab-llama-{name}.gguf"
    with GGUFFile(vocab) as f:
        tokenizer = tokenizer_from_gguf({k: v for k, v in f.metadata.items() if k.startswith("tokenizer.")}, str(vocab))
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    written = write_tokenizer_files(tokenizer, tmp_path)
    assert {p.name for p in written} == {"tokenizer.model" if name == "spm" else "tokenizer.json", "tokenizer_config.json"}
    if name == "spm":
        import sentencepiece

        reference = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model")).encode
    else:
        from tokenizers import Tokenizer as HFTokenizer

        hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
        reference = lambda text: hf.encode(text, add_special_tokens=False).ids
        assert hf.encode("hi").ids[0] == tokenizer.bos_id  # BOS from the post-processor, as add_bos says
    back = tokenizer_from_dir(tmp_path)
    for text, expected in read_vectors(vocab):
        assert reference(text) == expected, text
        assert back.encode(text) == expected, text
    assert (back.bos_id, back.eos_id, back.add_bos_token) == (tokenizer.bos_id, tokenizer.eos_id, tokenizer.add_bos_token)
    assert back.chat_template == tokenizer.chat_template


def test_gguf_to_safetensors_folder_keeps_the_tokenizer(smollm2_path, assets, tmp_path):
    """SmolLM2's GGUF converted to a folder: llamaherd and transformers both tokenize it, chat
    template included, as the GGUF's own tokenizer does."""
    from transformers import AutoTokenizer

    folder = convert(smollm2_path, tmp_path / "smollm2", to="safetensors", out_type="f16")
    gguf_tok, folder_tok = llamaherd.load(smollm2_path).tokenizer, llamaherd.load(folder).tokenizer
    hf_tok = AutoTokenizer.from_pretrained(folder)
    text = (assets / "text" / "botchan" / "botchan.txt").read_text(encoding="utf-8")[:4000] + " Grüße 🦙 東京 12345"
    assert folder_tok.encode(text) == gguf_tok.encode(text) == hf_tok.encode(text, add_special_tokens=False)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    assert folder_tok.encode_chat(messages) == gguf_tok.encode_chat(messages)
    rendered = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == gguf_tok.apply_chat_template(messages)
    assert hf_tok.encode(rendered, add_special_tokens=False) == gguf_tok.encode_chat(messages)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["eos_token"] == gguf_tok.id_to_piece(gguf_tok.eos_id)
