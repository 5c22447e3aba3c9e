"""Linear and Embedding layers that compute on a GGUF file's own weight encoding.

Nothing is decoded to float32 at load time. Products are computed

  * Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q8_0, Q2_K .. Q6_K (native kernels): on a copy of the
    weight repacked once at load into an 8-row interleaved layout of about the same size
    (csrc/packed_layout.h), in integers (int8 products, exact), for any number of rows of x.
    Each block of x, 32 values (k-quants: 256, as GGML's Q8_K), is carried by int8 values
    with one scale per block, in terms, each rounding what the ones before missed at 1/128
    of the previous term's scale (so a row's terms add up in integers before one conversion
    to float):
      - by default three terms: x kept to ~2^-22 of its block's largest value, float32's
        own precision, so answers stay those of the float model (SmolLM2: same greedy
        text, logits within 1e-3 of transformers, sampled tokens independent of batching).
        One row of x (decoding) stays near the memory's limit (TinyLlama-shaped Q4_0: 25
        against 27 GB/s with one term). For many rows the packed types run on AMX tiles
        where the CPU has them (Intel since Sapphire Rapids; csrc/amx_tiles.h), faster than
        BLAS on decoded runs (Q4_0, 512 rows: 1.35x; 64 rows: 2x; the k-quants up to
        KQUANT_TILE_ROWS); elsewhere more than DECODE_ROWS rows go to BLAS on decoded runs;
      - with int8_activations (load(..., int8_activations=True)) one term, as llama.cpp does:
        a third of the arithmetic, but |error| <= half a step (1/254 of the block's largest
        value) moves logits by ~1 on SmolLM2.
    Each row of x is rounded on its own, so batching rows does not change any row's result.
    The loader then lets go of the file's pages, so the weight is held once.
  * F32, F16, BF16 (native kernels): for a few rows of x by converting weight rows to float in
    registers; for many rows by BLAS, on F32's own bytes or on a run of 16-bit rows decoded
    into a scratch buffer.
  * IQ4_XS, and the k-quants where they are not packed (native kernels): on the
    memory-mapped bytes, a 256-value super-block at a time, in integers with a few rows of
    x carried by int8 terms as above but with one scale per 256 values (GGML's Q8_K), three
    by default, one with int8_activations; for many rows, runs of rows decoded to float32
    for BLAS.
  * other types, or without the native kernels (no compiler, not x86-64 AVX2, CUDA): on
    the memory-mapped bytes, decoding a run of rows at a time to float32 with the torch
    decoder in ggml_dequant and calling BLAS.

The float paths compute x @ dequantize(W)^T up to the order of float additions.
"""

from __future__ import annotations

import mmap
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from .ggml_dequant import dequantize
from .ggml_types import BLOCK_GEOMETRY, GGMLType
from .kernels import native

PACKED_TYPES = frozenset({GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.IQ4_NL, GGMLType.Q8_0,
                          GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K})  # repacked, integer kernels
FLOAT_WEIGHTS = frozenset({GGMLType.F32, GGMLType.F16, GGMLType.BF16})  # multiplied as floats, a row at a time
SIXTEEN_BIT = frozenset({GGMLType.F16, GGMLType.BF16})  # runs decoded for BLAS by the native kernels
NATIVE_KQUANTS = frozenset({GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.IQ4_XS})  # decoded a super-block at a time
DECODE_ROWS = 8  # up to this many input rows go through the row/integer kernels; more through BLAS (or AMX_TYPES' tiles)
AMX_TYPES = frozenset({GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.IQ4_NL, GGMLType.Q8_0,
                       GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K})  # tiles for many rows
# Rows of x in three terms up to which the k-quants go to the tiles; past them, BLAS on decoded
# runs, which grows with the rows while the tiles keep their pace. Measured on TinyLlama-shaped
# layers against BLAS: Q4_K (its scales folded into the tiles' bytes) 1.3x at 512 rows; Q5_K
# 1.56x at 64, 1.09x at 256, 0.99x at 512; Q2_K, Q3_K, Q6_K (two scales a sub-block) 1.1x at
# 64, 0.75x at 256. In one term (int8_activations) the tiles at any count (Q6_K 1.7x, Q4_K 3x).
KQUANT_TILE_ROWS = {GGMLType.Q4_K: 1 << 62, GGMLType.Q5_K: 256, GGMLType.Q2_K: 64, GGMLType.Q3_K: 64, GGMLType.Q6_K: 64}
SCRATCH_BYTES = 8 << 20  # decoded weight run for the BLAS path
PACK_CHUNK_BYTES = 4 << 20  # a weight's file bytes repacked at a time (GGUFLinear.pack)
HUGE_PAGE_BYTES = 2 << 20  # packed weights this large go on huge pages (weight_buffer)
FAULT_SAMPLES, SLOW_HUGE_PAGE_S = 4, 1e-3  # huge pages slower than this to fault in: the rest on small pages (WeightArena)

_scratch: dict[torch.device, torch.Tensor] = {}
Release = Callable[["GGUFLinear", int, int], None]  # (layer, start, nbytes): its source bytes were copied


def _scratch_buffer(numel: int, device: torch.device) -> torch.Tensor:
    buf = _scratch.get(device)
    if buf is None or buf.numel() < numel:
        buf = _scratch[device] = torch.empty(numel, dtype=torch.float32, device=device)
    return buf[:numel]


def weight_buffer(nbytes: int) -> torch.Tensor:
    """An uninitialised uint8 tensor of nbytes for a packed weight, on 2 MiB pages where Linux
    gives them: transparent huge pages, in their usual "madvise" mode, go only to memory that
    asks, and only to whole 2 MiB-aligned runs of it, so the mapping is 2 MiB longer and the
    tensor starts at its first aligned byte (pages never touched cost no memory). Decoding
    streams every weight once a token; on 4 KiB pages each page costs a TLB miss and the
    hardware prefetcher stops at its end. TinyLlama-shaped, 2 threads, decode on 4 KiB ->
    huge pages: Q4_0 33-35 -> 36-38 tokens/s, with int8 activations 38-40 -> 42-44, Q8_0
    20.5-21 -> 23-24; same load time and RSS where memory is at hand (see WeightArena). The
    loader cuts a model's weights from one such buffer."""
    return _huge_page_mapping(nbytes)[0]


def _huge_page_mapping(nbytes: int) -> tuple[torch.Tensor, mmap.mmap | None, int]:
    """weight_buffer's tensor, the mapping it lies in (None: not on huge pages) and where in
    the mapping it starts."""
    if nbytes < HUGE_PAGE_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):  # small, or not Linux
        return torch.empty(nbytes, dtype=torch.uint8), None, 0
    buf = mmap.mmap(-1, nbytes + HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE)  # private: shared anonymous memory is shmem, not THP
    buf.madvise(mmap.MADV_HUGEPAGE)
    whole = torch.frombuffer(buf, dtype=torch.uint8)  # the tensor keeps buf (and its pages) alive
    start = -whole.data_ptr() % HUGE_PAGE_BYTES
    return whole[start : start + nbytes], buf, start


class WeightArena:
    """Packed weights cut one after another from one weight_buffer, so nearly all of a model's
    bytes sit on huge pages: weights apart each leave their last partial 2 MiB on small pages
    (TinyLlama-shaped Q4_0: 393 of its 556 MiB on huge pages apart, all of them here), and
    each of those small pages costs a page fault while loading.

    Unless huge pages are slow to come by: a virtual machine whose host backs guest memory
    when it is first touched, and takes back what the guest frees (Firecracker's free page
    reporting), gave fresh 2 MiB pages at ~0.5 GB/s against ~8 GB/s once backed (4.5 against
    0.23 ms a page), and loading TinyLlama-shaped Q4_0 took 1.0-1.4 s instead of 0.35 s; small
    pages come from memory still backed (0.4 s either way, decoding 8% slower). Where a weight
    is handed out, its first huge page is faulted in and timed: once the last few took longer
    than SLOW_HUGE_PAGE_S on average (lazily backed memory comes mixed with backed memory: one
    slow page in four is enough), the rest of the arena goes on small pages."""

    ALIGN = 64  # each weight starts on a cache line

    def __init__(self, sizes: list[int]) -> None:
        self._buffer, self._mapping, self._start = _huge_page_mapping(sum(self.padded(n) for n in sizes))
        self._used = 0
        self._fault_times: list[float] = []

    @classmethod
    def padded(cls, nbytes: int) -> int:
        return -(-nbytes // cls.ALIGN) * cls.ALIGN

    def take(self, nbytes: int) -> torch.Tensor:
        """nbytes of the arena (a buffer of its own once the planned sizes are used up)."""
        if self._used + nbytes > self._buffer.numel():
            return weight_buffer(nbytes)
        out = self._buffer[self._used : self._used + nbytes]
        self._time_a_huge_page(self._used)
        self._used += self.padded(nbytes)
        return out

    def _time_a_huge_page(self, offset: int) -> None:
        if self._mapping is None:
            return
        page = -(-offset // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES  # the buffer starts on one
        if page >= self._buffer.numel():
            return
        at = self._start + page
        began = time.perf_counter()
        self._mapping[at] = 0  # faulted in (the pack writes it next)
        self._fault_times = [*self._fault_times[-(FAULT_SAMPLES - 1):], time.perf_counter() - began]
        if len(self._fault_times) == FAULT_SAMPLES and statistics.fmean(self._fault_times) > SLOW_HUGE_PAGE_S:
            self._mapping.madvise(mmap.MADV_NOHUGEPAGE, at + HUGE_PAGE_BYTES)
            self._mapping = None


def row_bytes(ggml_type: int, row_len: int) -> int:
    block_elems, block_bytes = BLOCK_GEOMETRY[GGMLType(ggml_type)]
    return row_len // block_elems * block_bytes


class GGUFLinear(nn.Module):
    """y = x @ W^T with W ([out_features, in_features]) kept in its GGML encoding.

    `packed` holds the repacked copy for PACKED_TYPES when the native kernels run (then
    the caller may drop `raw`'s pages); otherwise `raw` is used as it is. With
    `int8_activations`, x is rounded to int8 once, as llama.cpp does (module docstring)."""

    int8_activations = False

    def __init__(self, raw: torch.Tensor, ggml_type: int, out_features: int, in_features: int, pack: bool = True) -> None:
        super().__init__()
        if raw.numel() != out_features * row_bytes(ggml_type, in_features):
            raise ValueError(f"{raw.numel()} bytes do not hold a {GGMLType(ggml_type).name} [{out_features}, {in_features}] weight")
        self.ggml_type = int(ggml_type)
        self.out_features = out_features
        self.in_features = in_features
        self.register_buffer("raw", raw, persistent=False)
        self.packed = None
        if pack:
            self.pack()

    def packable(self) -> bool:
        return self.packed is None and self.ggml_type in PACKED_TYPES and self.raw.device.type == "cpu" and native() is not None

    def pack(self, release: Release | None = None, allocate: Callable[[int], torch.Tensor] = weight_buffer) -> bool:
        """Repack the weight for the integer kernels where they apply, into allocate(bytes) (a
        WeightArena's take, from the loader); True when it was. `release`: see _pack_into."""
        if not self.packable():
            return False
        packed = allocate(self._packed_bytes())
        self._pack_into(packed, release)
        self.packed, self.raw = packed, None
        return True

    def _packed_bytes(self) -> int:
        return native().packed_bytes(self.ggml_type, self.out_features, self.in_features)

    def _pack_into(self, out: torch.Tensor, release: Release | None) -> None:
        """Pack `raw` into `out` (_packed_bytes() of them) PACK_CHUNK_BYTES of source bytes at
        a time, calling release(self, start, nbytes) once each chunk is packed, so the caller
        can let go of those file pages: a large weight (a 128k-vocabulary output layer is
        hundreds of MB) is never held twice."""
        n, k, rb = self.out_features, self.in_features, row_bytes(self.ggml_type, self.in_features)
        group_bytes = out.numel() // ((n + 7) // 8)
        rows = max(8, PACK_CHUNK_BYTES // rb // 8 * 8)  # whole groups of 8 rows: chunks pack apart
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            native().pack([self.raw[r0 * rb : r1 * rb]], self.ggml_type, k, out[r0 // 8 * group_bytes : (r1 + 7) // 8 * group_bytes])
            if release is not None:
                release(self, r0 * rb, (r1 - r0) * rb)

    @classmethod
    def concat(cls, layers: list["GGUFLinear"], release: Release | None = None,
               allocate: Callable[[int], torch.Tensor] = weight_buffer) -> "GGUFLinear | None":
        """One packed layer computing all of `layers` (not yet packed) side by side, their
        outputs concatenated, or None when they can't share one product. It saves a kernel
        call, and rounding x, for each extra weight. Each layer's rows are packed straight
        from its bytes into its run of one buffer (whole groups of 8 rows: each n a multiple
        of 8); `release` and `allocate` as for pack()."""
        first = layers[0]
        if not all(
            isinstance(l, GGUFLinear) and l.packable() and l.ggml_type == first.ggml_type
            and l.in_features == first.in_features and l.out_features % 8 == 0
            for l in layers
        ):
            return None
        sizes = [l._packed_bytes() for l in layers]
        packed = allocate(sum(sizes))
        for l, part in zip(layers, packed.split(sizes)):
            l._pack_into(part, release)
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.ggml_type, fused.in_features = first.ggml_type, first.in_features
        fused.out_features = sum(l.out_features for l in layers)
        fused.register_buffer("packed", packed, persistent=False)
        fused.raw = None
        fused.int8_activations = first.int8_activations
        return fused

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {GGMLType(self.ggml_type).name}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and (self.int8_activations or x.numel() <= DECODE_ROWS * self.in_features
                                        or self._on_tiles(x.numel() // self.in_features)):
            # any leading dimensions go straight to the kernel: a decode step's hot path (no
            # x.float() there: even returning x itself, a torch call costs a microsecond or two)
            x = x if x.dtype is torch.float32 else x.float()
            return native().gemm_packed(x, self.packed, self.ggml_type, self.out_features, 1 if self.int8_activations else 3)
        flat = x.reshape(-1, self.in_features).float()
        if self.packed is not None:  # float-accurate prefill: BLAS on decoded runs beats three int8 terms
            y = self._blas(flat, native())
        else:
            ext = native() if self.raw.device.type == "cpu" else None
            k_vectors = self.in_features % 8 == 0  # the float kernels take rows of whole vectors
            if ext is not None and self.ggml_type in FLOAT_WEIGHTS and k_vectors and flat.shape[0] <= DECODE_ROWS:
                y = ext.gemm_float(flat, self.raw, self.ggml_type, self.out_features)
            elif self.ggml_type == GGMLType.F32:  # BLAS on the file's own floats
                y = flat @ self.raw.view(torch.float32).view(self.out_features, self.in_features).t()
            elif ext is not None and self.ggml_type in NATIVE_KQUANTS and flat.shape[0] <= DECODE_ROWS:
                y = ext.gemm_kquant(flat, self.raw, self.ggml_type, self.out_features, 1 if self.int8_activations else 3)
            else:
                y = self._blas(flat, ext)
        return y.view(*x.shape[:-1], self.out_features)

    def _on_tiles(self, rows: int) -> bool:
        """Whether many rows of x in three terms go to the AMX tiles rather than BLAS."""
        if self.ggml_type not in AMX_TYPES or not native().amx():
            return False
        return rows <= KQUANT_TILE_ROWS.get(self.ggml_type, rows)

    def ggml_bytes(self) -> torch.Tensor:
        """The weight in its GGML encoding (as in the file)."""
        if self.packed is None:
            return self.raw
        return native().unpack(self.packed, self.ggml_type, self.out_features, self.in_features)

    def _blas(self, flat: torch.Tensor, ext) -> torch.Tensor:
        n, k = self.out_features, self.in_features
        packed = self.packed is not None and ext is not None
        raw = None if packed else self.ggml_bytes()
        y = torch.empty(flat.shape[0], n, dtype=torch.float32, device=flat.device)
        run = max(1, min(n, SCRATCH_BYTES // (4 * k)))
        rb = row_bytes(self.ggml_type, k)
        for r0 in range(0, n, run):
            r1 = min(n, r0 + run)
            if packed:
                w = _scratch_buffer((r1 - r0) * k, flat.device).view(r1 - r0, k)
                ext.dequant_packed(self.packed, self.ggml_type, n, k, r0, r1, w)
            elif ext is not None and self.ggml_type in SIXTEEN_BIT and self.in_features % 8 == 0:
                w = _scratch_buffer((r1 - r0) * k, flat.device).view(r1 - r0, k)
                ext.dequant_16bit(raw, self.ggml_type, n, k, r0, r1, w)
            elif ext is not None and self.ggml_type in NATIVE_KQUANTS:
                w = _scratch_buffer((r1 - r0) * k, flat.device).view(r1 - r0, k)
                ext.dequant_kquant(raw, self.ggml_type, n, k, r0, r1, w)
            else:
                w = dequantize(raw[r0 * rb : r1 * rb], self.ggml_type, (r1 - r0, k))
            torch.mm(flat, w.t(), out=y[:, r0:r1])  # BLAS writes the column run in place: no copy of y
        return y

    def dequantized(self) -> torch.Tensor:
        return dequantize(self.ggml_bytes(), self.ggml_type, (self.out_features, self.in_features))


class GGUFEmbedding(nn.Module):
    """Token embeddings kept as GGML blocks: only the rows looked up are decoded."""

    def __init__(self, raw: torch.Tensor, ggml_type: int, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.rb = row_bytes(ggml_type, embedding_dim)
        self.register_buffer("raw", raw, persistent=False)
        self.ggml_type = int(ggml_type)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self._meta = torch.empty(0, dtype=torch.float32, device=raw.device)

    @property
    def weight(self) -> torch.Tensor:
        """A 0-element float32 tensor: callers read `.weight.device` and `.weight.dtype` off it."""
        return self._meta

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {GGMLType(self.ggml_type).name}"

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        rows = self.raw.view(self.num_embeddings, self.rb)[tokens.reshape(-1)]
        out = dequantize(rows.reshape(-1), self.ggml_type, (rows.shape[0], self.embedding_dim))
        return out.to(tokens.device).view(*tokens.shape, self.embedding_dim)
