"""Hugging Face folders (sharded safetensors + index) against transformers, tokenizer.json
against the tokenizers library, and malformed safetensors headers (cases and fuzzing)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llamaherd
from llamaherd.errors import FormatError
from llamaherd.formats.safetensors import SafetensorsFile, write_safetensors
from tests.fetch_assets import assets_path
from tests.hf_models import random_hf_llama
from tests.resident import resident_kib

ASSETS = assets_path()
SHAKESPEARE = ASSETS / "text" / "shakespeare"
BOTCHAN = ASSETS / "text" / "botchan" / "botchan.txt"


@pytest.mark.parametrize("shape", [dict(), dict(num_attention_heads=8, num_key_value_heads=2),
                                   dict(tie_word_embeddings=True, num_key_value_heads=1)])
def test_sharded_hf_folder_matches_transformers(tmp_path, shape):
    hf = random_hf_llama(seed=7, **shape)
    hf.save_pretrained(tmp_path, max_shard_size="100KB")  # several shards and an index
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    write_byte_level_tokenizer(tmp_path, hf.config.vocab_size)
    llm = llamaherd.load(tmp_path)
    ids = torch.randint(0, hf.config.vocab_size, (33,), generator=torch.Generator().manual_seed(3)).tolist()
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0]
    assert (llm.logits(ids) - expected).abs().max().item() < 1e-4


# --- tokenizer.json ---------------------------------------------------------------------

def shakespeare_texts(n: int = 3) -> list[str]:
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(SHAKESPEARE.glob("*_gut.txt"))[:n]]


def write_byte_level_tokenizer(directory: Path, vocab_size: int = 2000) -> Path:
    """A GPT-2-style byte-level BPE tokenizer.json trained on Shakespeare with the tokenizers library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(shakespeare_texts(2), trainer)
    tok.save(str(directory / "tokenizer.json"))
    return directory / "tokenizer.json"


def write_metaspace_tokenizer(directory: Path) -> Path:
    """A Llama-2-style tokenizer.json (BPE with byte fallback, "▁" for spaces) trained on Botchan."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])  # Llama-2's tokenizer.json decoder
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["<unk>", "<s>", "</s>", *bytes_],
                                  show_progress=False)
    tok.train_from_iterator([BOTCHAN.read_text(encoding="utf-8")], trainer)
    tok.save(str(directory / "tokenizer.json"))
    return directory / "tokenizer.json"


@pytest.mark.parametrize("kind", ["byte-level", "metaspace"])
def test_tokenizer_json_matches_the_tokenizers_library(tmp_path, kind):
    from tokenizers import Tokenizer as HFTokenizer

    from llamaherd.tokenizer.files import tokenizer_from_file

    path = write_byte_level_tokenizer(tmp_path) if kind == "byte-level" else write_metaspace_tokenizer(tmp_path)
    ours, reference = tokenizer_from_file(path), HFTokenizer.from_file(str(path))
    texts = shakespeare_texts(3) + [BOTCHAN.read_text(encoding="utf-8")]
    for text in texts:
        expected = reference.encode(text, add_special_tokens=False).ids
        assert ours.encode(text) == expected
        if kind == "byte-level":
            assert ours.decode(expected) == text
        else:
            assert ours.decode(expected) == reference.decode(expected, skip_special_tokens=False)


def test_sentencepiece_model_matches_the_sentencepiece_library():
    import sentencepiece

    from llamaherd.tokenizer.files import tokenizer_from_file

    for name in ("botchan_en_bpe_1000.model", "botchan_en_unigram_1000.model"):
        path = BOTCHAN.parent / name
        ours, sp = tokenizer_from_file(path), sentencepiece.SentencePieceProcessor(model_file=str(path))
        for text in [BOTCHAN.read_text(encoding="utf-8")] + shakespeare_texts(1):
            expected = sp.encode(text)
            assert ours.encode(text) == expected
            known = [i for i in expected if i != sp.unk_id()]  # sentencepiece shows <unk> as " ⁇ "
            assert ours.decode(known) == sp.decode(known)


# --- malformed files --------------------------------------------------------------------

def st_bytes(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(blob) if length is None else length) + blob + data


F32_2x2 = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
MALFORMED = {
    "too-short": b"\x01\x02",
    "header-length-past-end": st_bytes(F32_2x2, b"\0" * 16, length=10_000),
    "header-length-over-100MB": st_bytes(F32_2x2, b"\0" * 16, length=200_000_000),
    "header-length-huge": st_bytes(b"{}", length=2**64 - 1),
    "invalid-json": st_bytes(b'{"w": {"dtype": "F32", ', b"\0" * 16),
    "invalid-utf8": st_bytes(b'{"\xff\xfe": 1}'),
    "not-an-object": st_bytes(b"[1, 2, 3]"),
    "deep-nesting": st_bytes(b"[" * 100000 + b"]" * 100000),
    "unknown-dtype": st_bytes({"w": {"dtype": "F128", "shape": [2], "data_offsets": [0, 32]}}, b"\0" * 32),
    "negative-dim": st_bytes({"w": {"dtype": "F32", "shape": [-2, -2], "data_offsets": [0, 16]}}, b"\0" * 16),
    "offsets-out-of-range": st_bytes({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 8),
    "offsets-reversed": st_bytes({"w": {"dtype": "F32", "shape": [0], "data_offsets": [16, 0]}}, b"\0" * 16),
    "offsets-negative": st_bytes({"w": {"dtype": "U8", "shape": [4], "data_offsets": [-4, 0]}}, b"\0" * 16),
    "dtype-shape-vs-bytes": st_bytes({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}, b"\0" * 16),
    "overflowing-shape": st_bytes({"w": {"dtype": "F32", "shape": [2**62, 2**62, 4], "data_offsets": [0, 16]}}, b"\0" * 16),
    "overlap": st_bytes({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                         "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 16),
    "duplicate-name": st_bytes(b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
                               b'"w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}', b"\0\0"),
    "bad-metadata": st_bytes({"__metadata__": {"a": 1}}),
    "extra-field": st_bytes({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": 0}}, b"\0"),
    "float-offsets": st_bytes({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0.0, 1.0]}}, b"\0"),
    "bool-shape": st_bytes({"w": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}, b"\0"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_safetensors_is_a_format_error(tmp_path, case):
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(MALFORMED[case])
    with pytest.raises(FormatError) as info:
        SafetensorsFile(path)
    assert str(path) in str(info.value)


def test_writer_output_reads_back(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(4).to(torch.bfloat16), "c": torch.arange(6, dtype=torch.int64)}
    path = tmp_path / "x.safetensors"
    write_safetensors(path, [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()], tensors.__getitem__)
    f = SafetensorsFile(path)
    for k, v in tensors.items():
        assert torch.equal(f.tensor(k), v)
    from safetensors.torch import load_file  # and the reference reader agrees

    for k, v in load_file(path).items():
        assert torch.equal(v, tensors[k])


def test_release_drops_a_copied_tensors_pages_and_keeps_views_valid(tmp_path):
    big = torch.randn(1024, 1024).to(torch.bfloat16)  # 2 MiB: whole pages inside
    tensors = {"small": torch.randn(3), "big": big}
    path = tmp_path / "x.safetensors"
    write_safetensors(path, [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()], tensors.__getitem__)
    f = SafetensorsFile(path)
    view = f.tensor("big")
    assert torch.equal(view, big)  # every page read: resident
    before = resident_kib(view.data_ptr())
    if before is None:
        pytest.skip("no /proc/self/smaps")
    f.release("big")
    after = resident_kib(view.data_ptr())
    assert before - after >= 2048 - 8  # the 2 MiB less at most the partial pages at its ends
    assert torch.equal(view, big)  # read again from the page cache


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
entries = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "U8", "I64", "BOOL", "X"]),
    "shape": st.lists(st.integers(-2, 2**40), max_size=4),
    "data_offsets": st.lists(st.integers(-8, 2**40), min_size=0, max_size=3),
})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=st.dictionaries(st.text(max_size=6), entries | json_values, max_size=4),
    data=st.binary(max_size=64),
    length_delta=st.integers(-16, 16),
    garbage=st.binary(max_size=16),
)
def test_fuzzed_safetensors_headers_never_crash(tmp_path, header, data, length_delta, garbage):
    blob = json.dumps(header).encode() + garbage
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(struct.pack("<Q", max(0, len(blob) + length_delta)) + blob + data)
    try:
        f = SafetensorsFile(path)
    except FormatError as e:
        assert str(path) in str(e)
        return
    for name, entry in f.tensors.items():  # whatever parsed must be readable within the file
        assert entry.start + entry.nbytes <= path.stat().st_size
        f.tensor(name)
    f.close()
