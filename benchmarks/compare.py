"""llamaherd vs llama.cpp (llama-cpp-python) vs transformers on the same GGUF files.

    python benchmarks/make_models.py            # once: random TinyLlama-shaped F16/Q8_0/Q4_0
    pip install llama-cpp-python                # the llama.cpp peer (its own setup step)
    python benchmarks/compare.py [--threads 2] [--rounds 2] [--only decode prefill batch load ppl hf]

On CPUs with AMX (Intel Sapphire Rapids and later) llama.cpp's AMX backend crashes in
ggml_backend_amx_mul_mat on quantized files (llama.cpp issue #20824; seen here with 0.3.36);
build the peer without it, its other x86 kernels as -march=native would pick them:

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
      -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
      -DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
      pip install --no-cache-dir --force-reinstall --no-deps llama-cpp-python

llamaherd runs with its defaults (float-accurate activations); the decode, prefill and
batch tables add an "int8-x" column: --int8-activations, which rounds activations to int8
once before each quantized product, as llama.cpp does.

Every measurement runs in a fresh subprocess (one engine, one model, one task) and
prints JSON; engines alternate within each round and the best of the rounds is kept,
so a busy machine hurts all engines alike. The machine's read bandwidth is measured in
the same run, and each decode rate is shown as a fraction of bandwidth / bytes per token
(the weight bytes read for one token: every matrix once, the embedding table only when
it is also the output layer).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BENCH_DIR = Path(os.environ.get("LLAMAHERD_BENCH_DIR", "/tmp/llamaherd-bench"))
PROMPT = 8  # tokens of the short prompt before decoding


def smollm2() -> Path:
    from tests.fetch_assets import assets_path

    return assets_path() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def random_model(qtype: str) -> Path:
    return BENCH_DIR / f"random-tinyllama-{qtype}.gguf"


# --- workers (run in subprocesses) ----------------------------------------------------


def current_rss() -> int:
    """VmRSS now: taken after the engine's imports, before the model, it is the runtime's own
    footprint (Python, torch or libllama), which the model's memory comes on top of."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) * 1024


def peak_rss() -> int:
    # VmHWM, not getrusage: maxrss survives exec, so it would report the driver's peak (its 1 GiB
    # bandwidth buffer). Read here, not through llamaherd: the llama.cpp worker must not load torch.
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024


def random_ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    import random

    r = random.Random(seed)
    return [r.randrange(3, vocab) for _ in range(n)]


def worker_llamaherd(task: str, model: str, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    import llamaherd
    from llamaherd.eval.bench import decode_rate, prefill_rate

    runtime_rss = current_rss()
    llm = llamaherd.load(model, quantize=args.quantize, int8_activations=args.int8_activations)
    m = llm.model
    out = {"load_s": time.perf_counter() - t0, "runtime_rss": runtime_rss}
    if task == "load":  # time to first token: import + load + short prompt + first token
        _, first = decode_rate(m, 0, 1, PROMPT)
        out["ttft_s"] = time.perf_counter() - t0
    elif task == "decode":
        decode_rate(m, 4, args.batch, PROMPT)
        out["tps"], _ = decode_rate(m, args.tokens, args.batch, PROMPT)
    elif task == "prefill":
        prefill_rate(m, 32)
        out["tps"] = max(prefill_rate(m, args.tokens) for _ in range(2))
    out["rss"] = peak_rss()
    return out


def worker_llamacpp(task: str, model: str, args) -> dict:
    import numpy as np

    t0 = time.perf_counter()
    from llama_cpp import Llama

    runtime_rss = current_rss()
    llm = Llama(model_path=model, n_ctx=1024, n_batch=512, n_threads=args.threads, n_threads_batch=args.threads,
                verbose=False, use_mmap=True)
    out = {"load_s": time.perf_counter() - t0, "runtime_rss": runtime_rss}
    vocab = llm.n_vocab()
    if task == "load":
        llm.eval(random_ids(PROMPT, vocab))
        int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out["ttft_s"] = time.perf_counter() - t0
    elif task == "decode":
        def run(n):
            llm.reset()
            llm.eval(random_ids(PROMPT, vocab))
            start = time.perf_counter()
            for _ in range(n):
                tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                llm.eval([tok])
            return n / (time.perf_counter() - start)
        run(4)
        out["tps"] = run(args.tokens)
    elif task == "prefill":
        def run(n):
            llm.reset()
            start = time.perf_counter()
            llm.eval(random_ids(n, vocab, seed=1))
            return n / (time.perf_counter() - start)
        run(32)
        out["tps"] = max(run(args.tokens) for _ in range(2))
    out["rss"] = peak_rss()
    return out


def hf_from_gguf(path: str, dtype):
    """transformers' LlamaForCausalLM holding the GGUF's weights (q/k rows back to rotate-half order)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llamaherd.formats.gguf import GGUFCheckpoint

    ck = GGUFCheckpoint(path)
    c = ck.config
    cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.ffn_dim,
                      num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
                      rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta, max_position_embeddings=c.max_seq_len,
                      tie_word_embeddings=c.tie_embeddings, torch_dtype=dtype)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    names = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
             "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
             "feed_forward.w2": "mlp.down_proj", "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    state = {}
    for name in ck.tensor_names():
        t = ck.load(name)
        if name.startswith("layers."):
            _, i, rest = name.split(".", 2)
            mod, _ = rest.rsplit(".", 1)
            if mod in ("attention.wq", "attention.wk"):
                heads = c.n_heads if mod == "attention.wq" else c.n_kv_heads
                t = t.view(heads, c.head_dim // 2, 2, -1).transpose(1, 2).reshape(t.shape)
            key = f"model.layers.{i}.{names[mod]}.weight"
        else:
            key = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
                   "output.weight": "lm_head.weight"}[name]
        state[key] = t.to(dtype)
    if c.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, assign=True, strict=False)
    model.model.rotary_emb.to_empty(device="cpu")
    model.model.rotary_emb.__init__(cfg)
    return model.eval()


def worker_transformers(task: str, model: str, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.hf_dtype]
    t0 = time.perf_counter()
    m = hf_from_gguf(model, dtype)
    out = {"load_s": time.perf_counter() - t0}
    vocab = m.config.vocab_size
    with torch.inference_mode():
        if task == "decode":
            def run(n):
                from transformers import DynamicCache

                cache = DynamicCache()
                o = m(torch.tensor([random_ids(PROMPT, vocab)]), past_key_values=cache, use_cache=True)
                start = time.perf_counter()
                for _ in range(n):
                    tok = o.logits[:, -1].argmax(-1, keepdim=True)
                    o = m(tok, past_key_values=o.past_key_values, use_cache=True)
                return n / (time.perf_counter() - start)
            run(2)
            out["tps"] = run(args.tokens)
        elif task == "prefill":
            ids = torch.tensor([random_ids(args.tokens, vocab, seed=1)])
            m(ids[:, :32])
            start = time.perf_counter()
            m(ids, logits_to_keep=1)
            out["tps"] = args.tokens / (time.perf_counter() - start)
    out["rss"] = peak_rss()
    return out


# --- driver ---------------------------------------------------------------------------


def run_worker(engine: str, task: str, model: Path, args, **extra) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", engine, task, str(model), "--threads", str(args.threads),
           "--tokens", str(extra.get("tokens", 128))]
    for key in ("batch", "quantize", "hf_dtype"):
        if extra.get(key) is not None:
            cmd += [f"--{key.replace('_', '-')}", str(extra[key])]
    if extra.get("int8_activations"):
        cmd.append("--int8-activations")
    # Both engines wait for work as they do by default (spinning a moment: the CLI's --wait
    # spin), whatever this process was started with: OMP_WAIT_POLICY=PASSIVE (tests/conftest.py
    # sets it) made llamaherd's Q4_0 decode 1.3x slower here.
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env.pop("OMP_WAIT_POLICY", None)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if p.returncode != 0:
        print(f"  ! {engine} {task} {model.name}: {p.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def read_bandwidth(repeats: int = 5) -> float:
    """Bytes/s of streaming reads over 1 GiB (far beyond the caches), best of `repeats`, on args.threads threads."""
    import torch

    a = torch.ones(1 << 27, dtype=torch.int64)
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        a.sum()
        best = max(best, a.numel() * 8 / (time.perf_counter() - t))
    return best


def bytes_per_token(path: Path) -> int:
    from llamaherd.formats.gguf import GGUFFile

    f = GGUFFile(path)
    tied = "output.weight" not in f.tensors
    return sum(t.nbytes for t in f.tensors.values() if t.name != "token_embd.weight" or tied)


def best(results: list[dict | None], key: str, lower: bool = False) -> float | None:
    vals = [r[key] for r in results if r and key in r]
    if not vals:
        return None
    return min(vals) if lower else max(vals)


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def interleaved_best_rates(engines: list[str], kind: str, path: Path, args, tokens: int) -> tuple:
    """Best tokens/s of llamaherd and llama.cpp, their runs interleaved so both see the same load."""
    rates = interleaved_rounds(engines, kind, path, args, tokens)
    return tuple(max((r for r, _ in rates.get(e, []) if r), default=None) for e in ("llamaherd", "llamacpp"))


INT8_X = "llamaherd int8-x"  # an engine for interleaved_rounds: llamaherd with --int8-activations


def interleaved_rounds(engines: list[str], kind: str, path: Path, args, tokens: int, bandwidth: bool = False) -> dict:
    """Per engine, each round's (tokens/s, read bandwidth measured just before that run, or None).
    This machine's bandwidth swings by a third within minutes, so a decode rate is compared
    with the bandwidth measured next to it, not the run's first measurement."""
    res = {e: [] for e in engines}
    for _ in range(args.rounds):
        for e in engines:
            bw = read_bandwidth(repeats=3) if bandwidth else None
            r = run_worker("llamaherd", kind, path, args, tokens=tokens, int8_activations=True) if e == INT8_X else \
                run_worker(e, kind, path, args, tokens=tokens)
            res[e].append((r["tps"] if r else None, bw))
    return res


def best_with_bandwidth(rounds: list) -> tuple:
    """The best rate of an engine's rounds and the bandwidth measured before it."""
    done = [(r, bw) for r, bw in rounds if r]
    return max(done) if done else (None, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=3, metavar=("ENGINE", "TASK", "MODEL"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--quantize", default=None)
    ap.add_argument("--hf-dtype", default="fp32")
    ap.add_argument("--int8-activations", action="store_true", help="(worker) llama.cpp's activation rounding")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--only", nargs="*", default=["decode", "prefill", "batch", "load", "hf"])
    ap.add_argument("--skip-llamacpp", action="store_true")
    ap.add_argument("--models", nargs="*", default=None, help="only these rows, e.g. 'rand-1.1B Q4_0'")
    ap.add_argument("--prefill-tokens", type=int, default=512)
    args = ap.parse_args()
    if args.worker:
        engine, task, model = args.worker
        fn = {"llamaherd": worker_llamaherd, "llamacpp": worker_llamacpp, "transformers": worker_transformers}[engine]
        print(json.dumps(fn(task, model, args)))
        return

    import torch

    torch.set_num_threads(args.threads)
    try:
        import llama_cpp  # noqa: F401
        have_cpp = not args.skip_llamacpp
    except ImportError:
        have_cpp = False
        print("llama-cpp-python is not installed: llama.cpp columns are empty", file=sys.stderr)
    bw = read_bandwidth()
    print(f"threads {args.threads}; read bandwidth {bw / 1e9:.2f} GB/s (1 GiB streaming sum)")
    models = {"SmolLM2 Q4_1": smollm2(), **{f"rand-1.1B {q}": random_model(q) for q in ("F16", "Q8_0", "Q4_0", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")}}
    if args.models:
        models = {k: v for k, v in models.items() if k in args.models}
    engines = ["llamaherd"] + (["llamacpp"] if have_cpp else [])

    if "decode" in args.only:
        print(f"\n## decode, batch 1, {args.tokens} tokens after an {PROMPT}-token prompt (tokens/s); limit: read "
              "bandwidth / bytes per token, bandwidth measured before each run, %bw: the best run against its own; "
              "'int8-x': llamaherd with --int8-activations")
        print(f"{'model':16s} {'llamaherd':>10s} {'int8-x':>8s} {'llama.cpp':>10s} {'ratio':>6s} {'limit':>7s} "
              f"{'lh %bw':>7s} {'int8-x %bw':>10s} {'cpp %bw':>7s}")
        for label, path in models.items():
            if not path.exists():
                continue
            rounds = interleaved_rounds(["llamaherd", INT8_X] + engines[1:], "decode", path, args, args.tokens, bandwidth=True)
            (lh, lh_bw), (lh8, lh8_bw) = best_with_bandwidth(rounds["llamaherd"]), best_with_bandwidth(rounds[INT8_X])
            cpp, cpp_bw = best_with_bandwidth(rounds.get("llamacpp", []))
            per_token = bytes_per_token(path)
            limit = (lh_bw or cpp_bw or bw) / per_token

            def share(rate, rate_bw):  # % of the bandwidth limit measured next to the run
                return fmt(rate / (rate_bw / per_token) * 100 if rate else None, '.0f')

            print(f"{label:16s} {fmt(lh, '.2f'):>10s} {fmt(lh8, '.2f'):>8s} {fmt(cpp, '.2f'):>10s} "
                  f"{fmt(lh / cpp if lh and cpp else None, '.2f'):>6s} {limit:7.2f} {share(lh, lh_bw):>6s}% "
                  f"{share(lh8, lh8_bw):>9s}% {share(cpp, cpp_bw):>6s}%", flush=True)

    if "prefill" in args.only:
        print(f"\n## prefill, {args.prefill_tokens}-token prompt (tokens/s); 'int8-x': llamaherd with --int8-activations "
              "(llama.cpp's activation rounding)")
        print(f"{'model':16s} {'llamaherd':>10s} {'int8-x':>8s} {'llama.cpp':>10s} {'ratio':>6s} {'int8-x ratio':>12s}")
        for label, path in models.items():
            if not path.exists():
                continue
            lh, cpp = interleaved_best_rates(engines, "prefill", path, args, args.prefill_tokens)
            lh8 = best([run_worker("llamaherd", "prefill", path, args, tokens=args.prefill_tokens, int8_activations=True)
                        for _ in range(args.rounds)], "tps")
            print(f"{label:16s} {fmt(lh):>10s} {fmt(lh8):>8s} {fmt(cpp):>10s} {fmt(lh / cpp if lh and cpp else None, '.2f'):>6s} "
                  f"{fmt(lh8 / cpp if lh8 and cpp else None, '.2f'):>12s}", flush=True)

    if "batch" in args.only and random_model("Q4_0").exists():
        print("\n## batched decode, rand-1.1B Q4_0, rows of different lengths stepped together (aggregate tokens/s)")
        for int8_x in (False, True):
            rates = {}
            for b in (1, 2, 4, 8):
                rates[b] = best([run_worker("llamaherd", "decode", random_model("Q4_0"), args, tokens=64, batch=b,
                                            int8_activations=int8_x) for _ in range(args.rounds)], "tps")
                print(f"{'int8-x ' if int8_x else ''}batch {b}: {fmt(rates[b], '.2f')} tokens/s "
                      f"({fmt(rates[b] / rates[1] if rates[b] and rates[1] else None, '.2f')}x batch 1)", flush=True)

    if "load" in args.only:
        # Q4_0 is the acceptance file; Q8_0 and F16 show the peak against files for which the
        # runtime (Python and torch, about 220 MiB) is a smaller share
        for q in ("Q4_0", "Q8_0", "F16"):
            path = random_model(q)
            if not path.exists():
                continue
            size = path.stat().st_size
            print(f"\n## load rand-1.1B {q}: time to first token ({PROMPT}-token prompt, fresh process, file in page cache) "
                  f"and peak RSS; file {size / 2**20:.0f} MiB")
            for e in engines:
                run_worker(e, "load", path, args)  # warm the page cache
            for e in engines:
                rs = [run_worker(e, "load", path, args) for _ in range(args.rounds)]
                ttft, rss = best(rs, "ttft_s", lower=True), best(rs, "rss", lower=True)
                base = best(rs, "runtime_rss", lower=True)
                model = best([{"model": r["rss"] - r["runtime_rss"]} for r in rs if r and "runtime_rss" in r], "model", lower=True)
                print(f"{e:10s} ttft {fmt(ttft, '.2f')} s (load {fmt(best(rs, 'load_s', lower=True), '.2f')} s), peak RSS "
                      f"{fmt(rss / 2**20 if rss else None, '.0f')} MiB = {fmt(rss / size if rss else None, '.2f')}x file; "
                      f"runtime before the model {fmt(base / 2**20 if base else None, '.0f')} MiB, the rest "
                      f"{fmt(model / 2**20 if model else None, '.0f')} MiB = {fmt(model / size if model else None, '.2f')}x file", flush=True)

    if "hf" in args.only and random_model("F16").exists():
        print("\n## transformers on the same rand-1.1B weights (from the F16 file)")
        print(f"{'peer':18s} {'decode t/s':>10s} {'prefill t/s':>11s}")
        for dt in ("fp32", "bf16"):
            d = best([run_worker("transformers", "decode", random_model("F16"), args, tokens=32, hf_dtype=dt)], "tps")
            p = best([run_worker("transformers", "prefill", random_model("F16"), args, tokens=512, hf_dtype=dt)], "tps")
            print(f"{'transformers ' + dt:18s} {fmt(d, '.2f'):>10s} {fmt(p):>11s}", flush=True)
    print(f"\nread bandwidth at the end: {read_bandwidth() / 1e9:.2f} GB/s")


if __name__ == "__main__":
    main()
