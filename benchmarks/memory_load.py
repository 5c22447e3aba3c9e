"""Peak memory of loading and converting a random-weight TinyLlama-1.1B-shaped checkpoint.

Writes a Meta-layout checkpoint (params.json + consolidated.00.pth, bf16 by default, ~2.2 GB;
--layers shrinks it), then in a fresh child process each: loads it (in the stored dtype, so
weights stay zero-copy views of the memory-mapped file), converts it to safetensors, and
converts it to GGUF. Prints peak RSS of each against the checkpoint size; the target is < 1.3x.

    python benchmarks/memory_load.py [--layers 22] [--dtype bf16] [--dir /tmp/llamaherd-mem]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

STEPS = {
    "load": "import llamaherd, torch; llm = llamaherd.load(SRC, dtype=DTYPE, verify=False); llm.logits([1, 2, 3])",
    "convert-safetensors": "from llamaherd.convert import convert; convert(SRC, OUT + '/st', to='safetensors')",
    "convert-gguf": "from llamaherd.convert import convert; convert(SRC, OUT + '/m.gguf', to='gguf')",
}


# VmHWM, the process's own peak RSS (ru_maxrss would carry over the parent's peak across exec).
PEAK = ("import sys; sys.stdout.write(str(next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') "
        "if l.startswith('VmHWM'))))")


def write_checkpoint(directory: Path, layers: int, dtype: str) -> None:
    import torch

    from llamaherd.config import NAMED_CONFIGS

    c = NAMED_CONFIGS["tinyllama-1.1b"]
    directory.mkdir(parents=True, exist_ok=True)
    params = {"dim": c.dim, "n_layers": layers, "n_heads": c.n_heads, "n_kv_heads": c.n_kv_heads,
              "vocab_size": c.vocab_size, "multiple_of": 256, "ffn_dim_multiplier": c.ffn_dim / 5461.0,
              "norm_eps": 1e-5}
    (directory / "params.json").write_text(json.dumps(params))
    torch_dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype]
    w = lambda *shape: torch.randn(*shape).mul_(0.02).to(torch_dtype)
    hd = c.dim // c.n_heads
    sd = {"tok_embeddings.weight": w(c.vocab_size, c.dim), "norm.weight": torch.ones(c.dim, dtype=torch_dtype),
          "output.weight": w(c.vocab_size, c.dim)}
    for i in range(layers):
        sd.update({
            f"layers.{i}.attention.wq.weight": w(c.dim, c.dim), f"layers.{i}.attention.wk.weight": w(c.n_kv_heads * hd, c.dim),
            f"layers.{i}.attention.wv.weight": w(c.n_kv_heads * hd, c.dim), f"layers.{i}.attention.wo.weight": w(c.dim, c.dim),
            f"layers.{i}.feed_forward.w1.weight": w(c.ffn_dim, c.dim), f"layers.{i}.feed_forward.w2.weight": w(c.dim, c.ffn_dim),
            f"layers.{i}.feed_forward.w3.weight": w(c.ffn_dim, c.dim),
            f"layers.{i}.attention_norm.weight": torch.ones(c.dim, dtype=torch_dtype),
            f"layers.{i}.ffn_norm.weight": torch.ones(c.dim, dtype=torch_dtype),
        })
    torch.save(sd, directory / "consolidated.00.pth")
    shutil.copyfile(Path(__file__).resolve().parents[2] / "shared/assets/text/botchan/botchan_en_bpe_1000.model",
                    directory / "tokenizer.model")


def measure(step: str, src: Path, out: Path, dtype: str) -> tuple[int, float]:
    code = (f"SRC, OUT = {str(src)!r}, {str(out)!r}; import torch; "
            f"DTYPE = {{'bf16': torch.bfloat16, 'f16': torch.float16, 'f32': torch.float32}}[{dtype!r}]; "
            + STEPS[step] + "; " + PEAK)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def baseline() -> int:
    code = "import torch, llamaherd, llamaherd.convert; " + PEAK
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "f16", "f32"))
    ap.add_argument("--dir", default="/tmp/llamaherd-mem")
    ap.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write_only:
        write_checkpoint(Path(args.dir), args.layers, args.dtype)
        return
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    src, out = root / "meta", root / "out"
    out.mkdir(parents=True)
    # written by a child process, so this one never holds the weights
    subprocess.run([sys.executable, __file__, "--write-only", "--layers", str(args.layers), "--dtype", args.dtype,
                    "--dir", str(src)], check=True)
    size = (src / "consolidated.00.pth").stat().st_size
    base = baseline()
    print(f"checkpoint: {size / 1e9:.2f} GB ({args.layers} layers, {args.dtype}); "
          f"interpreter + torch + llamaherd alone: {base / 1e6:.0f} MB peak RSS")
    for step in STEPS:
        peak, seconds = measure(step, src, out, args.dtype)
        print(f"{step:22s} peak RSS {peak / 1e9:6.2f} GB = {peak / size:.2f}x checkpoint "
              f"({(peak - base) / size:.2f}x above the bare interpreter), {seconds:.1f} s")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
