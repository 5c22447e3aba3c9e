"""The `llamaherd` command: thin subcommands over the Python API.

Errors in the user's input (a bad model file, a bad option) print one `error: ...`
line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from typing import Sequence

from . import __version__
from .errors import ChecksumError, FormatError

EXIT_USAGE = 2


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", help="model file or directory (default: SmolLM2-135M-Instruct, fetched if needed)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip checking the folder's checksum list (checklist.chk, SHA256SUMS) before loading")
    p.add_argument("--quantize", choices=("int8", "int4", "float"), default=None,
                   help="int8 (per output channel) or int4 (groups of --group-size) weights, or 'float' to decode "
                        "a quantized file to float32 (default: keep the file's weights as they are)")
    p.add_argument("--group-size", type=int, default=32, help="int4 group size (default 32)")
    p.add_argument("--int8-activations", action="store_true",
                   help="round activations to int8 before products with quantized GGUF weights, as llama.cpp does: 2-3x "
                        "faster prompts and batches, slightly different answers (default: float-accurate)")


def add_cpu_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("CPU threads")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice, one per core)")
    # Measured on a 2-core EPYC (TinyLlama-shaped Q4_0 and SmolLM2 decode): spinning 13-15% faster
    # than sleeping when idle; with another busy process on the cores, 1.5-2.5x slower.
    g.add_argument("--wait", choices=("spin", "sleep"), default=None,
                   help="how threads wait between pieces of work: 'spin' for a moment before sleeping (OpenMP's and "
                        "llama.cpp's way, fastest when the cores are otherwise idle) or 'sleep' at once (much faster "
                        "when other programs share the cores). Default: spin, unless OMP_WAIT_POLICY is set")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("-n", "--max-tokens", type=int, default=256, help="most tokens to generate (default 256)")
    g.add_argument("--temperature", "--temp", type=float, default=0.8, help="0 = greedy (default 0.8)")
    g.add_argument("--top-k", type=int, default=40, help="keep the k most likely tokens, 0 = off (default 40)")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass, 1 = off (default 0.95)")
    g.add_argument("--min-p", type=float, default=0.05, help="drop tokens below min-p x the best, 0 = off (default 0.05)")
    g.add_argument("--repeat-penalty", type=float, default=1.0, help="penalise recent tokens, 1 = off (default 1.0)")
    g.add_argument("--frequency-penalty", type=float, default=0.0,
                   help="lower a recent token's logit by this much per occurrence, 0 = off (default 0)")
    g.add_argument("--presence-penalty", type=float, default=0.0,
                   help="lower the logit of any recent token by this much, 0 = off (default 0)")
    g.add_argument("--repeat-last-n", type=int, default=64, help="how many recent tokens the penalties look at (default 64)")
    g.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same output")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop before TEXT (repeatable)")


def sampling_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        max_tokens=args.max_tokens, stop=args.stop, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, min_p=args.min_p, repeat_penalty=args.repeat_penalty,
        frequency_penalty=args.frequency_penalty, presence_penalty=args.presence_penalty,
        repeat_last_n=args.repeat_last_n, seed=args.seed,
    )


def load_model(args: argparse.Namespace):
    from .api import load

    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(args.threads)

    return load(args.model, verify=getattr(args, "verify", True), quantize=getattr(args, "quantize", None),
                group_size=getattr(args, "group_size", 32), int8_activations=getattr(args, "int8_activations", False))


def cmd_perplexity(args: argparse.Namespace) -> int:
    from .eval import perplexity

    text = open(args.file, encoding="utf-8").read()
    llm = load_model(args)
    r = perplexity(llm, text, ctx=args.ctx, progress=not args.quiet, max_windows=args.max_windows)
    print(f"perplexity {r.perplexity:.4f} over {r.n_scored} scored tokens ({r.n_windows} windows of {r.ctx}; "
          f"{r.seconds:.1f} s)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .eval.bench import peak_rss_bytes, run_bench

    llm = load_model(args)
    print(f"model:   {llm.source} ({llm.config.name}); {torch.get_num_threads()} threads")
    print(f"load:    {llm.load_seconds:.2f} s")
    for batch in args.batch:
        r = run_bench(llm.model, args.prompt_tokens, args.gen_tokens, batch)
        if batch == args.batch[0]:
            print(f"prefill: {r.prefill_tps:.1f} tokens/s ({r.prefill_tokens}-token prompt)")
        print(f"decode:  {r.decode_tps:.2f} tokens/s (batch {batch}, {r.decode_tokens} tokens each)")
    print(f"peak memory: {format_bytes(peak_rss_bytes())} (max RSS)")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    llm = load_model(args)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.echo:
        sys.stdout.write(prompt)
    for piece in llm.stream(prompt, **sampling_kwargs(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.verbose:
        s = llm.last_stats
        rate = s.completion_tokens / s.seconds if s.seconds else 0.0
        print(f"[load {llm.load_seconds:.2f} s; prompt {s.prompt_tokens} tokens; generated {s.completion_tokens} tokens "
              f"in {s.seconds:.2f} s, {rate:.1f} tokens/s; finish: {s.finish_reason}]", file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    llm = load_model(args)
    interactive = sys.stdin.isatty()
    messages: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    if interactive:
        print(f"Chatting with {llm.source.name}. /exit or Ctrl-D to quit, /reset to start over.", file=sys.stderr)
    try:
        while True:
            try:
                line = input(">>> " if interactive else "")
            except EOFError:
                break
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit", "/bye"):
                break
            if text == "/reset":
                messages = messages[:1] if args.system else []
                continue
            messages.append({"role": "user", "content": line})
            reply = []
            for piece in llm.chat(messages, **sampling_kwargs(args)):
                reply.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            messages.append({"role": "assistant", "content": "".join(reply)})
    except KeyboardInterrupt:
        sys.stdout.write("\n")
    return 0


def format_count(n: float) -> str:
    for unit in ("", "K", "M", "B", "T"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}" if unit else f"{n:.0f}"
        n /= 1000
    return f"{n:.1f}P"


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return ""


def cmd_inspect(args: argparse.Namespace) -> int:
    from .download import default_model_path
    from .formats import open_checkpoint

    if args.model_path and args.verify:
        from pathlib import Path

        from .formats.checksums import verify_checkpoint

        verify_checkpoint(Path(args.model_path))
    ckpt = open_checkpoint(args.model_path or default_model_path())
    c = ckpt.config
    tok = ckpt.tokenizer()
    tensors = ckpt.stored_tensors()
    total_bytes = sum(t[3] for t in tensors)
    print(f"file:           {ckpt.path}")
    print(f"format:         {ckpt.format_name}")
    print(f"architecture:   llama ({c.name})")
    print(f"parameters:     {format_count(c.n_params)} ({c.n_params:,})")
    print(f"layers:         {c.n_layers}")
    print(f"dim:            {c.dim} (FFN {c.ffn_dim})")
    print(f"heads:          {c.n_heads} query, {c.n_kv_heads} key/value, head size {c.head_dim}")
    print(f"rope:           theta {c.rope_theta:g}" + (f", scaling {c.rope_scaling.kind} x{c.rope_scaling.factor:g}" if c.rope_scaling else "")
          + (", frequency factors from file" if ckpt.freq_factors is not None else ""))
    print(f"norm eps:       {c.norm_eps:g}")
    print(f"context length: {c.max_seq_len}")
    print(f"output layer:   {'tied to token embeddings' if c.tie_embeddings else 'separate'}")
    print(f"tokenizer:      {tok.kind}, {tok.vocab_size} tokens, BOS {tok.bos_id}, EOS {tok.eos_id}")
    by_type = collections.defaultdict(lambda: [0, 0])
    for _, type_name, _, nbytes in tensors:
        by_type[type_name][0] += 1
        by_type[type_name][1] += nbytes
    kinds = ", ".join(f"{k} x{n} ({format_bytes(b)})" for k, (n, b) in sorted(by_type.items()))
    print(f"tensors:        {len(tensors)}, {format_bytes(total_bytes)}: {kinds}")
    if args.tensors:
        for name, type_name, shape, nbytes in tensors:
            print(f"  {name:40s} {type_name:6s} {str(list(shape)):20s} {format_bytes(nbytes)}")
    template = tok.chat_template
    print("chat template: " + ("(none; ChatML is used)" if not template else ""))
    if template:
        print("  " + template.strip().replace("\n", "\n  "))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .formats.checksums import check_directory, manifests_for

    directory = Path(args.directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory")
    manifests = manifests_for(directory)
    if manifests:
        print("checking against " + ", ".join(str(m) for m in manifests))
    else:
        print(f"{directory}: no checklist.chk or SHA256SUMS; identifying files by their SHA-256 only")
    results = check_directory(directory, progress=not args.quiet, include_unlisted=not manifests)
    labels = {"ok": "OK", "mismatch": "MISMATCH", "missing": "MISSING", "unlisted": "--"}
    for r in results:
        identity = f"  [{r.identity}]" if r.identity else ""
        print(f"{labels[r.status]:8s} {r.path}{identity}")
    bad = [r for r in results if r.status in ("mismatch", "missing")]
    if bad:
        print(f"{len(bad)} of {len(results)} files failed: " + ", ".join(str(r.path) for r in bad), file=sys.stderr)
        return 1
    if not results:
        print("nothing to verify", file=sys.stderr)
        return 1
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .download import download_release

    model_dir = download_release(args.url_base, args.model, args.to, workers=args.jobs, progress=not args.quiet)
    print(f"downloaded and verified {model_dir}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert

    if args.verify:
        from pathlib import Path

        from .formats.checksums import verify_checkpoint

        verify_checkpoint(Path(args.src), progress=not args.quiet)
    out = convert(args.src, args.dst, to=args.to, out_type=args.type, progress=not args.quiet)
    print(f"wrote {out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    import uvicorn

    from .download import default_model_path
    from .server import create_app
    from .server.app import model_id_for

    if args.max_batch < 1 or args.max_queue < 0 or (args.ctx_size is not None and args.ctx_size < 2):
        raise ValueError("--max-batch must be >= 1, --max-queue >= 0 and --ctx-size >= 2")
    path = Path(args.model) if args.model else default_model_path()
    if not path.exists():
        raise FileNotFoundError(f"no such model file or directory: {path}")
    api_key = args.api_key or os.environ.get("LLAMAHERD_API_KEY") or None
    # The server listens at once and loads in the background: /health says 503 until ready.
    args.model = str(path)
    app = create_app(loader=lambda: load_model(args), model_id=model_id_for(path), max_batch=args.max_batch,
                     max_queue=args.max_queue, context_length=args.ctx_size, api_key=api_key)
    print(f"llamaherd: serving {path.name} on http://{args.host}:{args.port} (chat page at /, API at /v1)",
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llamaherd",
        description="Run LLaMA-family language models (GGUF files, Meta and Hugging Face folders) from the command line.",
        epilog="Run 'llamaherd COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"llamaherd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("generate", help="continue a prompt, streaming the text",
                       description="Continue PROMPT with the model, printing tokens as they are generated.")
    p.add_argument("prompt", help="the text to continue ('-' reads it from standard input)")
    add_model_arg(p)
    add_cpu_args(p)
    add_sampling_args(p)
    p.add_argument("--echo", action="store_true", help="print the prompt before the continuation")
    p.add_argument("-v", "--verbose", action="store_true", help="print load time and tokens/s to standard error")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="talk with the model interactively",
                       description="Interactive chat using the model's own chat template. "
                                   "Type /exit (or Ctrl-D, Ctrl-C) to quit, /reset to forget the conversation.")
    add_model_arg(p)
    add_cpu_args(p)
    add_sampling_args(p)
    p.add_argument("--system", help="a system prompt for the conversation")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("perplexity", help="perplexity of the model over a text file (llama.cpp's method)",
                       description="Perplexity over FILE in non-overlapping windows of --ctx tokens, scoring the "
                                   "second half of each window, as llama.cpp's perplexity tool does.")
    p.add_argument("file", help="a UTF-8 text file")
    add_model_arg(p)
    add_cpu_args(p)
    p.add_argument("--ctx", type=int, default=512, help="window length in tokens (default 512)")
    p.add_argument("--max-windows", type=int, default=None, help="stop after this many windows")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_perplexity)

    p = sub.add_parser("bench", help="prefill and decode speed, load time and peak memory",
                       description="Time loading, a prefill of --prompt-tokens and greedy decoding of --gen-tokens.")
    add_model_arg(p)
    add_cpu_args(p)
    p.add_argument("--prompt-tokens", type=int, default=512, help="prefill length (default 512)")
    p.add_argument("--gen-tokens", type=int, default=128, help="decoded tokens (default 128)")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="decode batch sizes (default 1)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("inspect", help="describe a model file",
                       description="Print the architecture, parameter count, tensor types and sizes, tokenizer, "
                                   "context length and chat template of a model.")
    p.add_argument("model_path", nargs="?", help="model file or directory (default: the default model)")
    p.add_argument("--tensors", action="store_true", help="list every tensor")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip checking the folder's checksum list")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("verify", help="check a model folder's checksums and recognise genuine releases",
                       description="Check every file listed in DIRECTORY's checklist.chk (md5) or SHA256SUMS and "
                                   "say for each whether it is a known genuine release file, modified or unknown. "
                                   "Exit status 1 when a file is missing or does not match.")
    p.add_argument("directory", help="model folder (e.g. LLaMA/13B)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("download", help="fetch a Meta-layout release from an HTTP(S) mirror",
                       description="Fetch URL_BASE/tokenizer.model and the model folder (params.json, checklist.chk, "
                                   "consolidated.NN.pth) into DIR, in parallel, resumable, each file md5-checked "
                                   "before it is put in place.")
    p.add_argument("--from", dest="url_base", required=True, metavar="URL_BASE", help="base URL of the mirror")
    p.add_argument("--model", required=True, help="model folder name, e.g. 7B, 13B, 30B, 65B")
    p.add_argument("--to", required=True, metavar="DIR", help="destination folder")
    p.add_argument("-j", "--jobs", type=int, default=4, help="files fetched at once (default 4)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("convert", help="convert a model to safetensors (HF layout) or GGUF",
                       description="Convert any model llamaherd reads (Meta folder, HF folder, GGUF) to an HF-style "
                                   "safetensors folder or a GGUF file for llama.cpp, one tensor at a time.")
    p.add_argument("src", help="model file or folder")
    p.add_argument("dst", help="output folder (safetensors) or file (gguf)")
    p.add_argument("--to", required=True, choices=("safetensors", "gguf"), help="output format")
    p.add_argument("--type", choices=("f32", "f16", "bf16", "q8_0"), default=None,
                   help="tensor type (default: the source's; q8_0 for GGUF only)")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip checking the source's checksum list")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with continuous batching and a chat page",
                       description="Serve /v1/models, /v1/completions and /v1/chat/completions (OpenAI's API, "
                                   "streaming or not), /health, /metrics, and a chat page at /.")
    add_model_arg(p)
    add_cpu_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-batch", type=int, default=8, help="sequences generated together (default 8)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for a batch row; more get 429 (default 64)")
    p.add_argument("--ctx-size", type=int, default=None,
                   help="tokens per sequence, prompt included (default: the model's context, at most 4096)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/ (or set LLAMAHERD_API_KEY)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # OpenMP reads its wait policy once, when torch is imported (after this: commands import it lazily).
    if getattr(args, "wait", None) == "sleep":
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    elif getattr(args, "wait", None) == "spin":  # OpenMP's default: spin a moment, then sleep
        os.environ.pop("OMP_WAIT_POLICY", None)
    try:
        return args.func(args)
    except (FormatError, ChecksumError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. piped into `head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
