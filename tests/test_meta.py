"""Meta checkpoint folders against transformers, with transformers' own Meta -> HF converter
(convert_llama_weights_to_hf.py from transformers 4.40.2, run from a side environment) as the
outside reference: llamaherd.load(meta_dir).logits must match the converted model's within 1e-4.

That converter computes the KV width as dim / n_kv_heads, right only when n_heads = n_kv_heads**2,
and its unsharded path does not handle GQA at all; so GQA uses 4 heads over 2 KV heads, and the
1-shard GQA folder holds the same weights as the 2-shard one and is checked against that one's
conversion.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import llamaherd
from llamaherd.errors import FormatError
from llamaherd.formats.meta import MetaCheckpoint
from llamaherd.quant.ggml_types import GGMLType
from tests.checkpoints import SPM_MODEL, convert_with_transformers, tiny_params, write_meta_checkpoint
from tests.resident import resident_kib

VOCAB = 32000  # the converter's vocabulary when it is given no tokenizer
CASES = {  # name -> (params, shards, seed)
    "mha-1shard": (tiny_params(n_heads=4, vocab_size=VOCAB), 1, 1),
    "mha-2shards": (tiny_params(n_heads=4, vocab_size=VOCAB), 2, 2),
    "gqa-2shards": (tiny_params(n_heads=4, n_kv_heads=2, vocab_size=VOCAB), 2, 3),
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("meta")
    jobs, dirs = [], {}
    for name, (params, shards, seed) in CASES.items():
        meta = write_meta_checkpoint(root / name, params, n_shards=shards, seed=seed)
        dirs[name] = (meta, root / f"{name}-hf")
        jobs.append((meta, root / f"{name}-hf", shards))
    convert_with_transformers(jobs)
    # Same weights as gqa-2shards in one shard (the converter cannot do unsharded GQA).
    params, _, seed = CASES["gqa-2shards"]
    dirs["gqa-1shard"] = (write_meta_checkpoint(root / "gqa-1shard", params, n_shards=1, seed=seed),
                          root / "gqa-2shards-hf")
    return dirs


@pytest.mark.parametrize("case", ["mha-1shard", "mha-2shards", "gqa-2shards", "gqa-1shard"])
def test_meta_folder_matches_transformers_conversion(converted, case):
    from transformers import LlamaForCausalLM

    meta_dir, hf_dir = converted[case]
    llm = llamaherd.load(meta_dir)
    reference = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids = torch.randint(0, VOCAB, (37,), generator=torch.Generator().manual_seed(5)).tolist()
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0]
    got = llm.logits(ids)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4


def test_tokenizer_found_in_the_parent_folder(tmp_path):
    release = tmp_path / "LLaMA"
    meta = write_meta_checkpoint(release / "7B", tiny_params(vocab_size=1000), tokenizer=None)
    shutil.copyfile(SPM_MODEL, release / "tokenizer.model")
    llm = llamaherd.load(meta)
    assert llm.tokenizer.vocab_size == 1000
    assert llm.tokenizer.decode(llm.tokenizer.encode("Hello world")) == "Hello world"


def test_llama1_params_without_vocab_size_take_it_from_the_embeddings(tmp_path):
    params = tiny_params(vocab_size=1000)
    meta = write_meta_checkpoint(tmp_path / "m", params)
    params["vocab_size"] = -1
    (meta / "params.json").write_text(json.dumps(params))
    assert llamaherd.load(meta).config.vocab_size == 1000


def test_shard_gap_and_mismatched_shards_are_format_errors(tmp_path):
    meta = write_meta_checkpoint(tmp_path / "m", tiny_params(vocab_size=1000), n_shards=2)
    (meta / "consolidated.01.pth").rename(meta / "consolidated.02.pth")
    with pytest.raises(FormatError, match="without gaps"):
        llamaherd.load(meta)
    other = write_meta_checkpoint(tmp_path / "o", tiny_params(vocab_size=1000, dim=32), n_shards=2)
    (meta / "consolidated.02.pth").unlink()
    shutil.copyfile(other / "consolidated.01.pth", meta / "consolidated.01.pth")
    with pytest.raises(FormatError, match="cannot be joined|different shapes"):
        llamaherd.load(meta)


def test_tiktoken_tokenizer_model_matches_llama3_vectors(tmp_path, assets):
    """A Llama-3 tokenizer.model (tiktoken ranks) rebuilt from llama.cpp's Llama-3 vocabulary
    encodes llama.cpp's test strings to the expected ids."""
    import base64

    from llamaherd.formats.gguf import GGUFFile
    from llamaherd.tokenizer.bpe import BYTE_DECODER
    from llamaherd.tokenizer.files import tokenizer_from_file

    vocab = assets / "tokenizer-vectors" / "ggml-vocab-llama-bpe.gguf"
    tokens = GGUFFile(vocab).metadata["tokenizer.ggml.tokens"][:128000]
    lines = [base64.b64encode(bytes(BYTE_DECODER[c] for c in t)).decode() + f" {i}" for i, t in enumerate(tokens)]
    (tmp_path / "tokenizer.model").write_text("\n".join(lines) + "\n")
    tok = tokenizer_from_file(tmp_path / "tokenizer.model")
    assert tok.vocab_size == 128256 and tok.bos_id == 128000
    inputs = (vocab.parent / (vocab.name + ".inp")).read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = (vocab.parent / (vocab.name + ".out")).read_text(encoding="utf-8").splitlines()
    for text, expected in zip(inputs, outputs):
        assert tok.encode(text) == [int(x) for x in expected.split()], text


def test_16bit_weights_stay_16bit_and_give_the_float32_answers(converted):
    """bf16 shards: by default Linear weights are held as the file holds them, bf16 (half of
    float32's memory, no copy), and the logits are those of quantize="float" (everything
    decoded to float32) up to summation order."""
    from llamaherd.quant.gguf_linear import GGUFLinear

    meta_dir, _ = converted["gqa-2shards"]
    llm, plain = llamaherd.load(meta_dir), llamaherd.load(meta_dir, quantize="float")
    linears = [m for m in llm.model.modules() if isinstance(m, GGUFLinear)]
    assert len(linears) == 7 * llm.model.config.n_layers + 1
    assert all(m.ggml_type == int(GGMLType.BF16) and m.raw.numel() == 2 * m.in_features * m.out_features for m in linears)
    ids = list(range(5, 40))
    assert (llm.logits(ids) - plain.logits(ids)).abs().max().item() < 1e-5


def test_a_bf16_weight_beyond_fp16_range_keeps_its_value(tmp_path):
    """bf16 reaches 3e38; the 16-bit path keeps such a weight (fp16 would make it infinite)."""
    from llamaherd.quant.gguf_linear import GGUFLinear

    meta_dir = write_meta_checkpoint(tmp_path / "big", tiny_params(n_heads=4))
    shard = torch.load(meta_dir / "consolidated.00.pth")  # our own file, written just above
    shard["layers.0.feed_forward.w2.weight"][0, 0] = 1e5  # past fp16's 65504
    torch.save(shard, meta_dir / "consolidated.00.pth")
    llm, plain = llamaherd.load(meta_dir), llamaherd.load(meta_dir, quantize="float")
    w2 = llm.model.layers[0].feed_forward.w2
    assert isinstance(w2, GGUFLinear) and w2.raw.view(torch.bfloat16)[0].item() > 65504
    ids = list(range(5, 30))
    logits = llm.logits(ids)
    assert logits.isfinite().all()
    assert (logits - plain.logits(ids)).abs().max().item() < 1e-5 * plain.logits(ids).abs().max().item()


def test_release_drops_the_pages_of_a_copied_tensor(tmp_path):
    """After the loader copied a tensor (e.g. widened to float32), its pages of the .pth map can go; the
    view stays readable (from the page cache)."""
    ckpt = MetaCheckpoint(write_meta_checkpoint(tmp_path / "m", tiny_params(dim=256, vocab_size=4096), seed=3))
    view = ckpt.load_raw("tok_embeddings.weight")  # 4096 x 256 bf16: 2 MiB
    expected = view.clone()
    before = resident_kib(view.data_ptr())
    if before is None:
        pytest.skip("no /proc/self/smaps")
    ckpt.release("tok_embeddings.weight")
    assert before - resident_kib(view.data_ptr()) >= 2048 - 8  # less at most the partial pages at its ends
    assert torch.equal(view, expected)
    ckpt.release("norm.weight")  # small: inside one page, nothing whole to drop, no error
