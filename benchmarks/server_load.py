"""Aggregate generation throughput of `llamaherd serve` under 1, 4, 8 and 16 concurrent clients.

Starts a server (or uses --url), then for each concurrency level runs that many streaming
clients at once (the official openai client), each asking for --max-tokens tokens, and
reports aggregate completion tokens per second (wall clock, prefill included) and the ratio
to one client. Continuous batching should make 8 clients at least 3x one client.

    python benchmarks/server_load.py [-m MODEL] [--max-tokens 32] [--clients 1,4,8,16]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.server_util import ServerProcess  # noqa: E402


def prompt_for(i: int) -> str:
    # counting keeps the model going (no early end-of-sequence), so every client gets max_tokens
    return ", ".join(str(n) for n in range(i, i + 4 + i % 5)) + ","


async def one_client(client: openai.AsyncOpenAI, model: str, i: int, max_tokens: int) -> tuple[int, float]:
    start = time.perf_counter()
    first = None
    tokens = 0
    stream = await client.completions.create(model=model, prompt=prompt_for(i), max_tokens=max_tokens,
                                              temperature=0, stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.perf_counter() - start
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return tokens, first or 0.0


async def run_level(url: str, model: str, clients: int, max_tokens: int) -> dict:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    start = time.perf_counter()
    results = await asyncio.gather(*(one_client(client, model, i, max_tokens) for i in range(clients)))
    wall = time.perf_counter() - start
    await client.close()
    tokens = sum(t for t, _ in results)
    return {"clients": clients, "tokens": tokens, "seconds": wall, "tokens_per_s": tokens / wall,
            "first_token_s": statistics.median(f for _, f in results)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-m", "--model", default=None, help="model file (default: SmolLM2 from the shared assets)")
    parser.add_argument("--url", default=None, help="benchmark a running server instead of starting one")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for the started server")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    server = None
    url = args.url
    if url is None:
        from tests.fetch_assets import assets_path

        model_path = Path(args.model) if args.model else assets_path() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
        options = ["--max-batch", str(max(levels)), "--max-queue", str(max(levels)), "--ctx-size", "512"]
        if args.threads:
            options += ["--threads", str(args.threads)]
        server = ServerProcess(model_path, *options).wait_ready()
        url = server.url
    try:
        model = openai.OpenAI(base_url=f"{url}/v1", api_key="unused").models.list().data[0].id
        asyncio.run(run_level(url, model, 1, 4))  # warm-up
        rows = [asyncio.run(run_level(url, model, c, args.max_tokens)) for c in levels]
    finally:
        if server is not None:
            server.stop()

    base = rows[0]["tokens_per_s"]
    print(f"llamaherd serve, {model}, {args.max_tokens} tokens per client, streaming, greedy")
    print(f"{'clients':>7} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'x 1 client':>10} {'first token (median)':>21}")
    for r in rows:
        print(f"{r['clients']:>7} {r['tokens']:>7} {r['seconds']:>8.2f} {r['tokens_per_s']:>9.1f} "
              f"{r['tokens_per_s'] / base:>10.2f} {r['first_token_s']:>20.2f}s")
    by_clients = {r["clients"]: r["tokens_per_s"] for r in rows}
    if 1 in by_clients and 8 in by_clients:
        ratio = by_clients[8] / by_clients[1]
        verdict = "ok" if ratio >= 3 else "BELOW TARGET"
        print(f"8 clients / 1 client: {ratio:.2f}x (target >= 3x: {verdict})")
        return 0 if ratio >= 3 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
