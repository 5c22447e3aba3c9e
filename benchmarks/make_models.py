"""Write the benchmark's random-weight model: TinyLlama-1.1B shapes as GGUF F16, Q8_0, Q4_0,
Q5_K_M, Q4_K_M, Q3_K_M and Q2_K.

    python benchmarks/make_models.py [--out DIR] [--types F16 Q8_0 Q4_0 Q5_K_M Q4_K_M Q3_K_M Q2_K]

Weights are N(0, 0.02) (norms 1), quantized by the `gguf` package's quantizer (the k-quant
mixes, which it cannot write, by llama.cpp's own quantizer from the F16 file:
llama-cpp-python), and the
LLaMA SentencePiece vocabulary (32000 tokens) is copied from llama.cpp's
ggml-vocab-llama-spm.gguf in the shared assets, so llama.cpp loads the same files.
Files that already exist are kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TINYLLAMA = dict(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn_dim=5632, vocab=32000, ctx=2048)
DEFAULT_OUT = Path("/tmp/llamaherd-bench")


def assets_dir() -> Path:
    from tests.fetch_assets import assets_path

    return assets_path()


def copy_vocab(writer: gguf.GGUFWriter, vocab_file: Path) -> None:
    reader = gguf.GGUFReader(str(vocab_file))
    for field in reader.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        value = field.contents()
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_array(field.name, value)
        else:
            writer.add_key_value(field.name, value, vtype)


def tensors(shape: dict, seed: int = 0):
    """(gguf name, float32 array) for every tensor, generated one at a time."""
    rng = np.random.default_rng(seed)
    d, f, v = shape["dim"], shape["ffn_dim"], shape["vocab"]
    hd = d // shape["n_heads"]
    kv = shape["n_kv_heads"] * hd

    def w(*s):
        return rng.standard_normal(s, dtype=np.float32) * np.float32(0.02)

    yield "token_embd.weight", w(v, d)
    for i in range(shape["n_layers"]):
        yield f"blk.{i}.attn_norm.weight", np.ones(d, np.float32)
        yield f"blk.{i}.attn_q.weight", w(d, d)
        yield f"blk.{i}.attn_k.weight", w(kv, d)
        yield f"blk.{i}.attn_v.weight", w(kv, d)
        yield f"blk.{i}.attn_output.weight", w(d, d)
        yield f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32)
        yield f"blk.{i}.ffn_gate.weight", w(f, d)
        yield f"blk.{i}.ffn_up.weight", w(f, d)
        yield f"blk.{i}.ffn_down.weight", w(d, f)
    yield "output_norm.weight", np.ones(d, np.float32)
    yield "output.weight", w(v, d)


def write_model(path: Path, qtype: str, shape: dict = TINYLLAMA) -> Path:
    qt = gguf.GGMLQuantizationType[qtype]
    tmp = path.with_suffix(".tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name(f"random-tinyllama-{qtype}")
    writer.add_block_count(shape["n_layers"])
    writer.add_context_length(shape["ctx"])
    writer.add_embedding_length(shape["dim"])
    writer.add_feed_forward_length(shape["ffn_dim"])
    writer.add_head_count(shape["n_heads"])
    writer.add_head_count_kv(shape["n_kv_heads"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(shape["dim"] // shape["n_heads"])
    writer.add_vocab_size(shape["vocab"])
    writer.add_file_type({"F16": 1, "Q8_0": 7, "Q4_0": 2}[qtype])
    copy_vocab(writer, assets_dir() / "tokenizer-vectors" / "ggml-vocab-llama-spm.gguf")
    for name, t in tensors(shape):
        if t.ndim == 1:
            writer.add_tensor(name, t)
        elif qt == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, t.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(t, qt), raw_dtype=qt)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(path)
    return path


LLAMA_CPP_MIXES = ("Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")  # llama.cpp's names: LLAMA_FTYPE_MOSTLY_<name>


def quantize_with_llama_cpp(source: Path, path: Path, mix: str) -> None:
    """A k-quant mix (e.g. Q4_K_M: Q4_K, Q6_K for some layers) as llama.cpp's quantize tool makes it."""
    import ctypes

    try:
        import llama_cpp
    except ImportError:
        print(f"skipping {path.name}: llama-cpp-python is not installed", file=sys.stderr)
        return
    if not source.exists():
        write_model(source, "F16")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{mix}")
    tmp = path.with_suffix(".tmp")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not quantize {source}")
    tmp.rename(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--types", nargs="*", default=["F16", "Q8_0", "Q4_0", *LLAMA_CPP_MIXES])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for qtype in args.types:
        path = args.out / f"random-tinyllama-{qtype}.gguf"
        if path.exists():
            print(f"{path} exists")
            continue
        if qtype in LLAMA_CPP_MIXES:
            quantize_with_llama_cpp(args.out / "random-tinyllama-F16.gguf", path, qtype)
        else:
            write_model(path, qtype)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB)", flush=True)


if __name__ == "__main__":
    main()
