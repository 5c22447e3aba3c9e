"""`llamaherd convert`: any checkpoint llamaherd reads -> an HF-style safetensors folder or a
GGUF file that llama.cpp loads, one tensor at a time.

Tensors stay in llamaherd's canonical layout until the writer: the safetensors writer
uses HF names and permutes wq/wk rows back to rotate-half order; the GGUF writer uses
llama.cpp's names and keeps the interleaved order (GGUF's own). The tokenizer goes into
the GGUF metadata the way llama.cpp's convert_hf_to_gguf.py puts it there; out of a GGUF
file into the folder as tokenizer.json or tokenizer.model (tokenizer/export.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .config import ModelConfig
from .errors import FormatError
from .formats import open_checkpoint
from .formats.hf import hf_name, to_rotate_half
from .formats.safetensors import write_safetensors
from .model import rope_frequencies
from .tokenizer.export import write_tokenizer_files

OUT_TYPES = ("f32", "f16", "bf16", "q8_0")
TORCH_TYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
Q8_0_BLOCK = 32

_GGUF_LAYER = {
    "attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v", "attention.wo": "attn_output",
    "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up",
    "attention_norm": "attn_norm", "ffn_norm": "ffn_norm",
}
_GGUF_GLOBAL = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
                "output.weight": "output.weight"}


def gguf_name(canonical: str) -> str:
    if canonical in _GGUF_GLOBAL:
        return _GGUF_GLOBAL[canonical]
    _, layer, rest = canonical.split(".", 2)
    return f"blk.{layer}.{_GGUF_LAYER[rest.removesuffix('.weight')]}.weight"


def _raw(checkpoint, name: str) -> torch.Tensor:
    """The tensor in its stored float dtype where the reader can give it, else float32."""
    load_raw = getattr(checkpoint, "load_raw", None)
    t = load_raw(name) if load_raw is not None else checkpoint.load(name)
    return t if t.dtype in (torch.float32, torch.float16, torch.bfloat16) else t.float()


def default_type(checkpoint) -> str:
    names = checkpoint.tensor_names()
    dtype = _raw(checkpoint, names[0]).dtype if names else torch.float32
    return {torch.float16: "f16", torch.bfloat16: "bf16"}.get(dtype, "f32")


def convert(src: str | Path, dst: str | Path, to: str, out_type: str | None = None, progress: bool = False) -> Path:
    if to not in ("safetensors", "gguf"):
        raise ValueError(f"unknown output format {to!r} (safetensors or gguf)")
    if out_type is not None and out_type not in OUT_TYPES:
        raise ValueError(f"unknown tensor type {out_type!r} ({', '.join(OUT_TYPES)})")
    checkpoint = open_checkpoint(src)
    try:
        out_type = out_type or default_type(checkpoint)
        if to == "safetensors":
            return write_hf_dir(checkpoint, Path(dst), out_type, progress)
        return write_gguf(checkpoint, Path(dst), out_type, progress)
    finally:
        checkpoint.close()


# --- safetensors ------------------------------------------------------------------------

def hf_config_dict(config: ModelConfig, dtype: str, tokenizer=None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": config.dim, "intermediate_size": config.ffn_dim,
        "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
        "num_hidden_layers": config.n_layers, "head_dim": config.head_dim, "vocab_size": config.vocab_size,
        "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_seq_len, "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "torch_dtype": {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype],
    }
    s = config.rope_scaling
    if s is not None and s.kind == "linear":
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": s.factor}
    elif s is not None:
        cfg["rope_scaling"] = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                               "high_freq_factor": s.high_freq_factor,
                               "original_max_position_embeddings": s.original_max_position}
    if tokenizer is not None:
        cfg["bos_token_id"], cfg["eos_token_id"] = tokenizer.bos_id, tokenizer.eos_id
    return cfg


def tokenizer_files(checkpoint) -> list[Path]:
    """Tokenizer files that travel with a checkpoint to an HF folder."""
    if checkpoint.format_name == "meta":
        return [checkpoint.tokenizer_path] if checkpoint.tokenizer_path else []
    if checkpoint.format_name.startswith("hf"):
        names = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")
        return [checkpoint.path / n for n in names if (checkpoint.path / n).is_file()]
    return []


def write_hf_dir(checkpoint, dst: Path, out_type: str, progress: bool) -> Path:
    if out_type not in TORCH_TYPES:
        raise ValueError(f"safetensors output takes f32, f16 or bf16, not {out_type}")
    if checkpoint.freq_factors is not None and checkpoint.config.rope_scaling is None:
        raise FormatError(f"{checkpoint.path}: rotary frequency factors without a named scaling cannot go into config.json")
    dtype = TORCH_TYPES[out_type]
    config = checkpoint.config
    dst.mkdir(parents=True, exist_ok=True)
    names = [n for n in checkpoint.tensor_names() if not (config.tie_embeddings and n == "output.weight")]
    shapes = {n: tuple(_shape_of(checkpoint, n)) for n in names}
    entries = [(hf_name(n), dtype, shapes[n]) for n in names]
    by_hf = {hf_name(n): n for n in names}

    def produce(hf: str) -> torch.Tensor:
        name = by_hf[hf]
        t = _raw(checkpoint, name)
        if name.endswith("attention.wq.weight"):
            t = to_rotate_half(t, config.n_heads)
        elif name.endswith("attention.wk.weight"):
            t = to_rotate_half(t, config.n_kv_heads)
        bar.update(1)
        return t.to(dtype).contiguous()

    with tqdm(total=len(entries), desc=f"writing {dst.name}", unit="tensor", disable=not progress) as bar:
        partial = dst / "model.safetensors.partial"
        write_safetensors(partial, entries, produce, metadata={"format": "pt"})
        partial.replace(dst / "model.safetensors")
    tokenizer = None
    files = tokenizer_files(checkpoint)
    for f in files:
        shutil.copyfile(f, dst / f.name)
    try:
        tokenizer = checkpoint.tokenizer()
    except (FormatError, OSError):
        pass
    if not files and tokenizer is not None:  # GGUF: the vocabulary in its metadata, as files
        write_tokenizer_files(tokenizer, dst)
    (dst / "config.json").write_text(json.dumps(hf_config_dict(config, out_type, tokenizer), indent=2))
    return dst


def _shape_of(checkpoint, name: str) -> tuple[int, ...]:
    """A tensor's shape without reading (or joining, or permuting) it."""
    if hasattr(checkpoint, "shape"):
        return checkpoint.shape(name)
    return tuple(checkpoint.tensor_info(name).shape)


# --- GGUF -------------------------------------------------------------------------------

def write_gguf(checkpoint, dst: Path, out_type: str, progress: bool) -> Path:
    import gguf

    config = checkpoint.config
    qtypes = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
              "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
    partial = dst.with_name(dst.name + ".partial")
    w = gguf.GGUFWriter(str(partial), "llama")
    w.add_name(config.name)
    w.add_block_count(config.n_layers)
    w.add_context_length(config.max_seq_len)
    w.add_embedding_length(config.dim)
    w.add_feed_forward_length(config.ffn_dim)
    w.add_head_count(config.n_heads)
    w.add_head_count_kv(config.n_kv_heads)
    w.add_layer_norm_rms_eps(config.norm_eps)
    w.add_rope_freq_base(config.rope_theta)
    w.add_rope_dimension_count(config.head_dim)
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
    w.add_vocab_size(config.vocab_size)
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[out_type])
    scaling = config.rope_scaling
    freq_factors = checkpoint.freq_factors
    if scaling is not None and scaling.kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(scaling.factor)
    elif scaling is not None and freq_factors is None:  # llama3: precomputed divisors, as llama.cpp does
        plain = rope_frequencies(config.replace(rope_scaling=None))
        freq_factors = (plain / rope_frequencies(config)).float()
    for key, value in tokenizer_metadata(checkpoint).items():
        _add_kv(w, key, value)

    names = [n for n in checkpoint.tensor_names() if not (config.tie_embeddings and n == "output.weight")]
    plan = []
    for name in names:
        shape = tuple(_shape_of(checkpoint, name))
        kind = out_type
        if len(shape) == 1:
            kind = "f32"  # norms stay F32 (llama.cpp does the same)
        elif kind == "q8_0" and shape[-1] % Q8_0_BLOCK:
            kind = "f16"
        n = int(np.prod(shape))
        nbytes = {"f32": 4 * n, "f16": 2 * n, "bf16": 2 * n, "q8_0": n // Q8_0_BLOCK * 34}[kind]
        plan.append((name, shape, kind, nbytes))
        w.add_tensor_info(gguf_name(name), shape, np.dtype(np.float32), nbytes, raw_dtype=qtypes[kind])
    if freq_factors is not None:
        factors = freq_factors.float().numpy()
        w.add_tensor_info("rope_freqs.weight", factors.shape, factors.dtype, factors.nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    with tqdm(total=sum(p[3] for p in plan), desc=f"writing {dst.name}", unit="B", unit_scale=True,
              disable=not progress) as bar:
        for name, shape, kind, nbytes in plan:
            w.write_tensor_data(_gguf_data(_raw(checkpoint, name), kind, qtypes[kind]))
            bar.update(nbytes)
        if freq_factors is not None:
            w.write_tensor_data(factors)
    w.close()
    partial.replace(dst)
    return dst


def _gguf_data(t: torch.Tensor, kind: str, qtype) -> np.ndarray:
    import gguf

    if kind == "f16":
        return t.to(torch.float16).contiguous().numpy()
    if kind == "f32":
        return t.to(torch.float32).contiguous().numpy()
    if kind == "bf16":
        return t.to(torch.bfloat16).contiguous().view(torch.uint16).numpy()
    return gguf.quants.quantize(t.to(torch.float32).contiguous().numpy(), qtype)


def _add_kv(w, key: str, value: Any) -> None:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if key.endswith("_token_id"):
        w.add_uint32(key, int(value))
    elif isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, list):
        w.add_array(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value)
    else:
        raise FormatError(f"cannot write metadata {key} of type {type(value).__name__}")


# --- the tokenizer as GGUF metadata -----------------------------------------------------

def tokenizer_metadata(checkpoint) -> dict[str, Any]:
    """`tokenizer.*` keys for the checkpoint's tokenizer, as llama.cpp's converter writes them."""
    if checkpoint.format_name == "gguf":
        return {k: v for k, v in checkpoint.metadata.items() if k.startswith("tokenizer.")}
    directory = checkpoint.path
    candidates = []
    if checkpoint.format_name == "meta" and checkpoint.tokenizer_path is not None:
        candidates.append(checkpoint.tokenizer_path)
    candidates += [directory / "tokenizer.model", directory / "tokenizer.json"]
    for path in candidates:
        if not path.is_file():
            continue
        if path.suffix == ".json":
            meta = _tokenizer_json_metadata(path)
        else:
            from .tokenizer.tiktoken_model import looks_like_tiktoken

            meta = _tiktoken_metadata(path) if looks_like_tiktoken(path) else _spm_metadata(path)
        return _pad_vocab(meta, checkpoint.config.vocab_size)
    raise FormatError(f"{directory}: no tokenizer.model or tokenizer.json to put in the GGUF")


def _spm_metadata(path: Path) -> dict[str, Any]:
    from .tokenizer.sentencepiece_model import SentencePieceTokenizer

    tok = SentencePieceTokenizer(path)
    sp = tok._sp
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": list(tok._tokens),
        "tokenizer.ggml.scores": [float(sp.get_score(i)) for i in range(tok.vocab_size)],
        "tokenizer.ggml.token_type": [int(t) for t in tok._types],
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
    }
    for key, value in (("bos", tok.bos_id), ("eos", tok.eos_id), ("unknown", tok.unk_id), ("padding", tok.pad_id)):
        if value is not None:
            meta[f"tokenizer.ggml.{key}_token_id"] = value
    return meta


def _tiktoken_metadata(path: Path) -> dict[str, Any]:
    from .tokenizer.tiktoken_model import merges_from_ranks, read_ranks, tiktoken_tokenizer

    tok = tiktoken_tokenizer(path)
    return {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.tokens": list(tok._tokens), "tokenizer.ggml.token_type": [int(t) for t in tok._types],
        "tokenizer.ggml.merges": merges_from_ranks(read_ranks(path)),
        "tokenizer.ggml.bos_token_id": tok.bos_id, "tokenizer.ggml.eos_token_id": tok.eos_id,
        "tokenizer.ggml.add_bos_token": True, "tokenizer.chat_template": tok.chat_template,
    }


def _tokenizer_json_metadata(path: Path) -> dict[str, Any]:
    from .tokenizer.tokenizer_json import TokenizerJson

    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    tok = TokenizerJson(path)
    if model.get("type") != "BPE" or not tok._byte_level:
        raise FormatError(f"{path}: only byte-level BPE tokenizer.json files can go into a GGUF without tokenizer.model")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe" if tok.token_to_id("<|begin_of_text|>") is not None else "default",
        "tokenizer.ggml.tokens": list(tok._tokens), "tokenizer.ggml.token_type": [int(t) for t in tok._types],
        "tokenizer.ggml.merges": merges, "tokenizer.ggml.add_bos_token": bool(tok.add_bos_token),
    }
    for key, value in (("bos", tok.bos_id), ("eos", tok.eos_id)):
        if value is not None:
            meta[f"tokenizer.ggml.{key}_token_id"] = value
    if tok.chat_template:
        meta["tokenizer.chat_template"] = tok.chat_template
    return meta


def _pad_vocab(meta: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """Pad the token list to the model's vocabulary with unused [PADn] tokens (as llama.cpp's
    converter does), so that llama.cpp's vocabulary and the embedding table agree."""
    tokens = meta["tokenizer.ggml.tokens"]
    if len(tokens) > vocab_size:
        raise FormatError(f"the tokenizer has {len(tokens)} tokens, more than the model's {vocab_size}")
    extra = vocab_size - len(tokens)
    if extra:
        meta["tokenizer.ggml.tokens"] = tokens + [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]
        meta["tokenizer.ggml.token_type"] = meta["tokenizer.ggml.token_type"] + [5] * extra
        if "tokenizer.ggml.scores" in meta:
            meta["tokenizer.ggml.scores"] = meta["tokenizer.ggml.scores"] + [0.0] * extra
    return meta
