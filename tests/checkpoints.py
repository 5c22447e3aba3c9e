"""Tiny random checkpoints in Meta's layout (params.json + consolidated.NN.pth shards), and
transformers 4.40.2's own Meta -> HF converter run from a side environment, for tests."""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llamaherd.config import meta_ffn_dim
from tests.fetch_assets import assets_path

ASSETS = assets_path()
SPM_MODEL = ASSETS / "text" / "botchan" / "botchan_en_bpe_1000.model"
COLUMN_PARALLEL = ("wq", "wk", "wv", "w1", "w3", "output")


def meta_state_dict(params: dict, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """A random full (unsharded) Meta state dict for params, values widened so layers matter."""
    g = torch.Generator().manual_seed(seed)
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv = params.get("n_kv_heads") or n_heads
    hd = dim // n_heads
    ffn = meta_ffn_dim(dim, params.get("multiple_of", 256), params.get("ffn_dim_multiplier"))
    vocab = params["vocab_size"]
    w = lambda *shape: (torch.randn(*shape, generator=g) * 0.2).to(dtype)
    norm = lambda: (torch.rand(dim, generator=g) + 0.5).to(dtype)
    sd = collections.OrderedDict(
        [("tok_embeddings.weight", w(vocab, dim)), ("norm.weight", norm()), ("output.weight", w(vocab, dim))]
    )
    for i in range(params["n_layers"]):
        sd[f"layers.{i}.attention.wq.weight"] = w(n_heads * hd, dim)
        sd[f"layers.{i}.attention.wk.weight"] = w(n_kv * hd, dim)
        sd[f"layers.{i}.attention.wv.weight"] = w(n_kv * hd, dim)
        sd[f"layers.{i}.attention.wo.weight"] = w(dim, n_heads * hd)
        sd[f"layers.{i}.feed_forward.w1.weight"] = w(ffn, dim)
        sd[f"layers.{i}.feed_forward.w2.weight"] = w(dim, ffn)
        sd[f"layers.{i}.feed_forward.w3.weight"] = w(ffn, dim)
        sd[f"layers.{i}.attention_norm.weight"] = norm()
        sd[f"layers.{i}.ffn_norm.weight"] = norm()
    return sd


def shard(sd: dict[str, torch.Tensor], n_shards: int) -> list[dict[str, torch.Tensor]]:
    """Split like Meta's model parallelism: column-parallel on dim 0, wo/w2/embeddings on dim 1."""
    shards = [collections.OrderedDict() for _ in range(n_shards)]
    for name, t in sd.items():
        module = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
        if module in COLUMN_PARALLEL:
            parts = t.chunk(n_shards, dim=0)
        elif module in ("wo", "w2", "tok_embeddings"):
            parts = t.chunk(n_shards, dim=1)
        else:
            parts = [t] * n_shards
        for s, p in zip(shards, parts):
            s[name] = p.clone()
    return shards


def write_meta_checkpoint(directory: Path, params: dict, n_shards: int = 1, seed: int = 0,
                          dtype: torch.dtype = torch.bfloat16, tokenizer: Path | None = SPM_MODEL) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.json").write_text(json.dumps(params))
    for i, part in enumerate(shard(meta_state_dict(params, seed, dtype), n_shards)):
        torch.save(part, directory / f"consolidated.{i:02d}.pth")
    if tokenizer is not None:
        shutil.copyfile(tokenizer, directory / "tokenizer.model")
    return directory


def tiny_params(n_heads: int = 4, n_kv_heads: int | None = None, dim: int = 64, vocab_size: int = 1000,
                n_layers: int = 2) -> dict:
    params = {"dim": dim, "n_layers": n_layers, "n_heads": n_heads, "multiple_of": 32, "norm_eps": 1e-5,
              "vocab_size": vocab_size}
    if n_kv_heads is not None:
        params["n_kv_heads"] = n_kv_heads
    return params


# --- transformers 4.40.2's converter, from a side environment ------------------------

HF_CONVERTER_VERSION = "4.40.2"
SIDE_PACKAGES = [f"transformers=={HF_CONVERTER_VERSION}", "tokenizers==0.19.1", "huggingface_hub==0.23.4",
                 "accelerate==0.30.1", "psutil"]


def side_env_dir() -> Path:
    base = Path(os.environ.get("LLAMAHERD_TEST_CACHE", Path.home() / ".cache" / "llamaherd-tests"))
    return base / f"transformers-{HF_CONVERTER_VERSION}"


def ensure_side_env() -> Path:
    """transformers 4.40.2 (whose wheel still ships convert_llama_weights_to_hf.py) and the
    versions it insists on, installed with pip into a folder put first on PYTHONPATH; torch,
    safetensors and numpy come from this venv. Skips the test when pip cannot install it."""
    target = side_env_dir()
    marker = target / ".complete"
    if not marker.exists():
        target.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target", str(target),
               *SIDE_PACKAGES]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot pip-install transformers {HF_CONVERTER_VERSION} for its Meta->HF converter: "
                        f"{result.stderr.strip()[-300:]}")
        marker.touch()
    return target


def convert_with_transformers(jobs: list[tuple[Path, Path, int]]) -> None:
    """Run transformers' own write_model (Meta -> HF) on each (meta_dir, out_dir, n_shards), in one
    child process (importing that transformers takes most of the time). write_model takes the
    shard count from the size name: 7B = 1 shard, 13B = 2."""
    side = ensure_side_env()
    sizes = {1: "7B", 2: "13B", 4: "30B", 8: "65B"}
    code = ("import sys; from transformers.models.llama.convert_llama_weights_to_hf import write_model\n"
            "for out, src, size in zip(*[iter(sys.argv[1:])] * 3):\n"
            "    write_model(out, src, size, tokenizer_path=None, safe_serialization=True)")
    args = [str(a) for out, src, n in ((o, m, sizes[n]) for m, o, n in jobs) for a in (out, src, n)]
    env = dict(os.environ, PYTHONPATH=str(side), TRANSFORMERS_NO_ADVISORY_WARNINGS="1")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise AssertionError(f"transformers {HF_CONVERTER_VERSION} converter failed:\n{result.stderr[-3000:]}")
