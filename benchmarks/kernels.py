"""Weight-only matmul kernels on this CPU, as ratios against fp32 F.linear (same script, repeated).

    python benchmarks/kernels.py [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def bench(fn, reps: int, rounds: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def read_bandwidth(nbytes: int = 1 << 30) -> float:
    """Bytes/s of a streaming read (sum over int64), best of a few runs."""
    a = torch.ones(nbytes // 8, dtype=torch.int64)
    t = bench(lambda: a.sum(), 1, 5)
    return nbytes / t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--m", type=int, nargs="*", default=[1, 8, 512])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bw = read_bandwidth()
    print(f"read bandwidth {bw / 1e9:.1f} GB/s; capability {torch.backends.cpu.get_cpu_capability()}")
    for n, k in [(2048, 2048), (11264, 2048), (2048, 5632)]:
        w = torch.randn(n, k) * 0.02
        wb = w.bfloat16()
        wh = w.half()
        scale = w.abs().amax(1) / 127
        w8 = torch.round(w / scale[:, None]).to(torch.int8)
        g = 32
        wg = w.view(n, k // g, g)
        lo, hi = wg.amin(-1), wg.amax(-1)
        s4 = ((hi - lo) / 15).clamp(min=1e-8)
        q4 = torch.round((wg - lo[..., None]) / s4[..., None]).clamp(0, 15).to(torch.int32).view(n, k)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q4, 1)
        sz = torch.stack([s4, lo + 8 * s4], -1).transpose(0, 1).contiguous()  # [k/g, n, 2]
        w8t = w8.t().contiguous()
        for m in args.m:
            x = torch.randn(m, k)
            xb = x.bfloat16()
            reps = max(1, 200 // m)
            res = {}
            res["fp32"] = bench(lambda: F.linear(x, w), reps)
            res["bf16"] = bench(lambda: F.linear(xb, wb), reps)
            res["fp16"] = bench(lambda: F.linear(x.half(), wh), reps)
            res["int8pack"] = bench(lambda: torch.ops.aten._weight_int8pack_mm(x, w8, scale), reps)
            res["int8pack-bf16"] = bench(lambda: torch.ops.aten._weight_int8pack_mm(xb, w8, scale.bfloat16()), reps)
            res["int4pack"] = bench(lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, g, sz), reps)
            res["int4pack-bf16"] = bench(lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed, g, sz.bfloat16()), reps)
            if m > 16:
                xq = torch.randint(-127, 127, (m, k), dtype=torch.int8)
                res["_int_mm"] = bench(lambda: torch._int_mm(xq, w8t), reps)
            line = " ".join(f"{name} {t * 1e3:.3f}ms({res['fp32'] / t:.2f}x)" for name, t in res.items())
            nb = {"fp32": 4, "int8pack": 1, "int4pack": 0.5 + 4 / g}
            frac = " ".join(f"{k2}@{n * k * b / res[k2] / bw:.0%}bw" for k2, b in nb.items())
            print(f"N={n} K={k} M={m}: {line} | {frac}", flush=True)


if __name__ == "__main__":
    main()
