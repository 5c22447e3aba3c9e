"""Quantized Linear layers: GGUF blocks on the native kernels and torch fallbacks, and
weight-only int8/int4 for float checkpoints, against plain float matmuls."""

import gc
import mmap
import os

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q
from gguf import quants

import llamaherd
from llamaherd.quant.ggml_dequant import dequantize
from llamaherd.formats.gguf import GGUFFile
from llamaherd.quant import gguf_linear
from llamaherd.quant.gguf_linear import DECODE_ROWS, NATIVE_KQUANTS, PACKED_TYPES, GGUFEmbedding, GGUFLinear
from llamaherd.quant.kernels import native
from llamaherd.quant.linear import Int4Linear, Int8Linear
from tests.gguf_builder import build_gguf
from tests.hf_models import random_hf_llama, write_gguf_from_hf
from tests.resident import resident_kib

TYPES = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16, "Q8_0": Q.Q8_0, "Q4_0": Q.Q4_0, "Q4_1": Q.Q4_1, "Q5_0": Q.Q5_0, "Q5_1": Q.Q5_1, "IQ4_NL": Q.IQ4_NL,
         "Q2_K": Q.Q2_K, "Q3_K": Q.Q3_K, "Q4_K": Q.Q4_K, "Q5_K": Q.Q5_K, "Q6_K": Q.Q6_K, "IQ4_XS": Q.IQ4_XS}


# blocks gguf can't quantize (k-quant super-blocks, IQ4_NL): block bytes, offsets of their fp16 scales
_K_SCALE_FIELDS = {Q.Q2_K: (84, (80, 82)), Q.Q3_K: (110, (108,)), Q.Q4_K: (144, (0, 2)), Q.Q5_K: (176, (0, 2)),
                   Q.Q6_K: (210, (208,)), Q.IQ4_NL: (18, (0,)), Q.IQ4_XS: (136, (0,))}


def gguf_bytes(w: np.ndarray, qtype) -> torch.Tensor:
    if qtype in _K_SCALE_FIELDS:  # gguf can't quantize these: random quants with sane scales
        block, fields = _K_SCALE_FIELDS[qtype]
        raw = np.random.default_rng(9).integers(0, 256, (w.size // GGML_QUANT_SIZES[qtype][0], block), dtype=np.uint8)
        for f in fields:
            raw[:, f : f + 2] = np.full((len(raw), 1), 0.01, np.float16).view(np.uint8)
    else:
        floats = {Q.F32: np.float32, Q.F16: np.float16}
        raw = w.astype(floats[qtype]).view(np.uint8) if qtype in floats else quants.quantize(w, qtype)
    return torch.from_numpy(np.ascontiguousarray(raw).reshape(-1))


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("rows", [1, 3, 8, 9, 40])
@pytest.mark.parametrize("n", [72, 69, 77])  # the packed layout's 9 or 10 groups of 8 rows (AVX-512: taken two at a time), the last partial in 69 and 77
def test_gguf_linear_equals_dequantized_matmul(name, rows, n):
    k = 512
    w = np.random.default_rng(0).standard_normal((n, k), dtype=np.float32)
    raw = gguf_bytes(w, TYPES[name])
    layer = GGUFLinear(raw, int(TYPES[name]), n, k)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
    w_float = dequantize(raw, int(TYPES[name]), (n, k)).double()
    expected = x.double() @ w_float.t()
    # float32 sums of 512 products: relative error ~ sqrt(512) * 2^-24, far below 1e-5
    tol = 1e-5 * expected.abs().max().item()
    if layer.packed is not None:
        # packed types multiply in integers with x carried by int8 blocks: exact products, so
        # each equals the float matmul on that x up to float32 summation
        # int8_activations: one term (llama.cpp's rounding); by default three
        # (packed k-quants: x in blocks of 256, the minimums' share on x's float sums, as below)
        block = 256 if TYPES[name] in NATIVE_KQUANTS else 32
        mins = kquant_minimums(raw, TYPES[name], n, k) if block == 256 else torch.zeros(n, k, dtype=torch.float64)
        for int8_activations, terms in ((True, 1), (False, 3)):
            layer.int8_activations = int8_activations
            reference = int8_terms(x, terms, block) @ (w_float + mins).t() - x.double() @ mins.t()
            assert (layer(x).double() - reference).abs().max().item() < tol
        layer.int8_activations = False
        # three terms are float-accurate: within half the last step, d / 2^15 with d = max|x| / 127
        # (about 2^-22 of each block's largest value)
        blocks = x.view(rows, -1, block)
        err = (int8_terms(x, 3, block).view_as(blocks) - blocks.double()).abs().amax(-1)
        assert (err <= blocks.abs().amax(-1) / 127 * 2**-15 * (1 + 1e-5)).all()
        assert (layer(x).double() - expected).abs().max().item() < 1e-5 * expected.abs().max().item()
        assert torch.equal(layer.ggml_bytes(), raw)  # the packed layout loses nothing
        # prefill's path: packed rows decoded to float32 for BLAS, exactly as GGML defines them
        run = torch.empty(n, k)
        native().dequant_packed(layer.packed, int(TYPES[name]), n, k, 0, n, run)
        assert torch.equal(run, w_float.float())
        part = torch.empty(min(n, 21) - 3, k)  # a run that cuts groups of 8 rows at both ends
        native().dequant_packed(layer.packed, int(TYPES[name]), n, k, 3, min(n, 21), part)
        assert torch.equal(part, w_float.float()[3:21])
    else:
        assert (layer(x).double() - expected).abs().max().item() < tol
        if TYPES[name] in NATIVE_KQUANTS and native() is not None and rows <= DECODE_ROWS:
            # k-quants multiply in integers too, x carried by int8 blocks of 256 (GGML's Q8_K),
            # except the minimums' share (Q4_K, Q5_K), which takes x's float sums
            mins = kquant_minimums(raw, TYPES[name], n, k)
            for int8_activations, terms in ((True, 1), (False, 3)):
                layer.int8_activations = int8_activations
                reference = int8_terms(x, terms, 256) @ (w_float + mins).t() - x.double() @ mins.t()
                assert (layer(x).double() - reference).abs().max().item() < tol
            layer.int8_activations = False
        if TYPES[name] in NATIVE_KQUANTS and native() is not None:  # decoded exactly as gguf decodes them
            part = torch.empty(min(n, 21) - 3, k)
            native().dequant_kquant(raw, int(TYPES[name]), n, k, 3, min(n, 21), part)
            reference = quants.dequantize(raw.numpy().reshape(n, -1), TYPES[name])
            assert torch.equal(part, torch.from_numpy(reference[3:21]))
    assert (layer._blas(x, None).double() - expected).abs().max().item() < tol  # torch fallback


def test_native_packs_the_types_it_multiplies():
    if native() is None:
        pytest.skip("no native kernels")
    packed = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
    for name in packed:
        raw = gguf_bytes(np.ones((8, 256), np.float32), TYPES[name])
        assert GGUFLinear(raw, int(TYPES[name]), 8, 256).packed is not None
    assert {int(t) for t in PACKED_TYPES} == {int(TYPES[n]) for n in packed}


@pytest.mark.parametrize("name", [t.name for t in sorted(gguf_linear.AMX_TYPES, key=int)])
def test_amx_tiles_give_the_vector_kernels_floats(name):
    """Where the CPU has AMX, many rows of x go to its tiles: the same integer products, added up
    in the same order, so the same floats as the vector kernels, bit for bit. Rows: below the
    tiles' threshold, one pass, passes of a row block, several row blocks; n = 77: a lone last
    group of 8 rows, partly filled."""
    if native() is None or not native().use_amx(True):
        pytest.skip("no AMX tiles here (CPU or OS)")
    n, k = 77, 512
    w = np.random.default_rng(1).standard_normal((n, k), dtype=np.float32)
    layer = GGUFLinear(gguf_bytes(w, TYPES[name]), int(TYPES[name]), n, k)
    try:
        for rows in (3, 8, 11, 33, 70):
            x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows)) * torch.rand(rows, 1) * 10
            for terms in (1, 2, 3):
                on_tiles = native().gemm_packed(x, layer.packed, layer.ggml_type, n, terms)
                native().use_amx(False)
                on_vectors = native().gemm_packed(x, layer.packed, layer.ggml_type, n, terms)
                native().use_amx(True)
                assert torch.equal(on_tiles, on_vectors), (rows, terms)
    finally:
        native().use_amx(True)



@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_wide_lanes_give_the_8_row_kernels_floats(name):
    """With AVX-512 the packed products take two groups of 8 weight rows a register (Lanes16),
    and a lone group 8 (Lanes8): per row the same integer and float steps, so the same floats.
    A 24-row weight's groups 0-1 go wide, its group 2 and each 8-row slice alone go narrow;
    the slices must match their columns bit for bit (a lane mixed up between the two groups,
    or a scale taken from the wrong one, would not)."""
    if native() is None:
        pytest.skip("no native kernels")
    n, k = 24, 512
    w = np.random.default_rng(5).standard_normal((n, k), dtype=np.float32)
    raw = gguf_bytes(w, TYPES[name])
    row_bytes = raw.numel() // n
    layer = GGUFLinear(raw, int(TYPES[name]), n, k)
    slices = [GGUFLinear(raw[row_bytes * r : row_bytes * (r + 8)].clone(), int(TYPES[name]), 8, k) for r in (0, 8, 16)]
    for rows in (1, 2, 5):
        x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows)) * torch.rand(rows, 1) * 10
        for terms in (1, 3):
            whole = native().gemm_packed(x, layer.packed, layer.ggml_type, n, terms)
            for i, part in enumerate(slices):
                alone = native().gemm_packed(x, part.packed, part.ggml_type, 8, terms)
                assert torch.equal(whole[:, 8 * i : 8 * i + 8], alone), (rows, terms, i)

@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "F16"])
def test_concat_equals_separate_layers(name):
    """q/k/v fused into one product: the same numbers as three products, bit for bit
    (x is rounded per row either way, and each weight row's arithmetic is unchanged)."""
    k = 256
    rng = np.random.default_rng(3)
    raws = [gguf_bytes(rng.standard_normal((n, k), dtype=np.float32), TYPES[name]) for n in (64, 16, 16)]
    layers = [GGUFLinear(raw, int(TYPES[name]), n, k) for raw, n in zip(raws, (64, 16, 16))]
    fused = GGUFLinear.concat([GGUFLinear(raw, int(TYPES[name]), n, k, pack=False) for raw, n in zip(raws, (64, 16, 16))])
    if layers[0].packed is None:  # F16 (or no native kernels): not fusable, kept apart
        assert fused is None
        return
    x = torch.randn(3, k)
    assert torch.equal(fused(x), torch.cat([l(x) for l in layers], dim=-1))
    # rows not a multiple of 8 would leave padding inside the fused layout: refused
    odd = GGUFLinear(gguf_bytes(rng.standard_normal((12, k), dtype=np.float32), TYPES[name]), int(TYPES[name]), 12, k, pack=False)
    assert GGUFLinear.concat([GGUFLinear(raws[0], int(TYPES[name]), 64, k, pack=False), odd]) is None



@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_packing_in_chunks_equals_packing_at_once(name, monkeypatch):
    """A weight packed a chunk of rows at a time (so its file pages can go as it is packed)
    is the same bytes as packed whole, and each chunk's source bytes are handed back once,
    in order, covering the weight (69 rows: a partial last group of 8)."""
    if native() is None:
        pytest.skip("no native kernels")
    n, k = 69, 256  # 256: a whole k-quant super-block
    raw = gguf_bytes(np.random.default_rng(4).standard_normal((n, k), dtype=np.float32), TYPES[name])
    rb = raw.numel() // n
    monkeypatch.setattr(gguf_linear, "PACK_CHUNK_BYTES", 16 * rb)  # chunks of 16 rows: five
    released = []
    layer = GGUFLinear(raw, int(TYPES[name]), n, k, pack=False)
    assert layer.pack(release=lambda part, start, nbytes: released.append((part is layer, start, nbytes)))
    assert torch.equal(layer.packed, native().pack([raw], int(TYPES[name]), k))
    assert released == [(True, r0 * rb, min(16, n - r0) * rb) for r0 in range(0, n, 16)]
    x = torch.randn(2, k)
    assert torch.equal(layer(x), GGUFLinear(raw, int(TYPES[name]), n, k)(x))
    # fused layers (whole groups of 8 rows each): each packed into its run of one buffer
    raws = [raw[: 64 * rb], raw[56 * rb : 64 * rb]]
    parts = [GGUFLinear(r, int(TYPES[name]), r.numel() // rb, k, pack=False) for r in raws]
    released.clear()
    fused = GGUFLinear.concat(parts, release=lambda part, start, nbytes: released.append((parts.index(part), start, nbytes)))
    assert torch.equal(fused.packed, native().pack(raws, int(TYPES[name]), k))
    assert released == [(0, r0 * rb, 16 * rb) for r0 in range(0, 64, 16)] + [(1, 0, 8 * rb)]


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of this process's mapping holding `address` (/proc/self/smaps)."""
    inside = False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "VmFlags:":
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def test_packed_weights_go_on_huge_pages(monkeypatch):
    """A packed weight of HUGE_PAGE_BYTES or more lives in its own private mapping advised to
    take huge pages (weight_buffer): the same bytes and products as in torch's own memory,
    single and fused, and the mapping lives as long as the tensor."""
    if native() is None or not hasattr(mmap, "MADV_HUGEPAGE"):
        pytest.skip("no native kernels, or no transparent huge pages (not Linux)")
    n, k = 64, 512
    rng = np.random.default_rng(5)
    raws = [gguf_bytes(rng.standard_normal((n, k), dtype=np.float32), Q.Q4_0) for _ in range(2)]
    small = [GGUFLinear(raw, int(Q.Q4_0), n, k) for raw in raws]  # below the threshold: torch's memory
    assert "hg" not in _vm_flags(small[0].packed.data_ptr())
    monkeypatch.setattr(gguf_linear, "HUGE_PAGE_BYTES", 1)
    big = GGUFLinear(raws[0], int(Q.Q4_0), n, k)
    fused = GGUFLinear.concat([GGUFLinear(raw, int(Q.Q4_0), n, k, pack=False) for raw in raws])
    gc.collect()
    x = torch.randn(3, k)
    for layer, reference in ((big, small[0](x)), (fused, torch.cat([l(x) for l in small], dim=-1))):
        assert "hg" in _vm_flags(layer.packed.data_ptr())  # MADV_HUGEPAGE
        assert torch.equal(layer(x), reference)
    assert torch.equal(big.packed, small[0].packed)


def test_a_loaded_model_cuts_its_packed_weights_from_one_huge_page_arena(smollm2_path):
    """The loader packs every weight into one 2 MiB-aligned mapping advised to take huge pages
    (WeightArena): one after another, each on a cache line, none overlapping, and the answers
    those of weights packed apart."""
    if native() is None or not hasattr(mmap, "MADV_HUGEPAGE"):
        pytest.skip("no native kernels, or no transparent huge pages (not Linux)")
    model = llamaherd.load(smollm2_path).model
    packed = sorted((m.packed for m in model.modules() if isinstance(m, GGUFLinear) and m.packed is not None),
                    key=lambda t: t.data_ptr())
    assert len(packed) == 1 + 4 * len(model.layers)  # output; per block: qkv, wo, w13, w2
    base = packed[0].untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() == base for t in packed)  # one mapping
    assert packed[0].data_ptr() % gguf_linear.HUGE_PAGE_BYTES == 0 and "hg" in _vm_flags(packed[0].data_ptr())
    for a, b in zip(packed, packed[1:]):
        assert b.data_ptr() % gguf_linear.WeightArena.ALIGN == 0 and a.data_ptr() + a.numel() <= b.data_ptr()
    layer = model.layers[3].feed_forward.w2
    alone = GGUFLinear(layer.ggml_bytes(), layer.ggml_type, layer.out_features, layer.in_features)
    x = torch.randn(5, layer.in_features)
    assert torch.equal(layer(x), alone(x))
    arena = gguf_linear.WeightArena([100])
    assert arena.take(100).numel() == 100 and arena.take(10).numel() == 10  # past the plan: a buffer of its own


@pytest.mark.parametrize("slow", [False, True])
def test_the_arena_leaves_huge_pages_that_are_slow_to_come_by(monkeypatch, slow):
    """WeightArena times the first huge page of each weight it hands out; once the last
    FAULT_SAMPLES took longer than SLOW_HUGE_PAGE_S on average (here: any time at all, or
    none), the rest of its mapping is advised against huge pages, the part handed out keeps
    them."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        pytest.skip("no transparent huge pages (not Linux)")
    monkeypatch.setattr(gguf_linear, "SLOW_HUGE_PAGE_S", 0.0 if slow else float("inf"))
    size, samples = 3 * gguf_linear.HUGE_PAGE_BYTES, gguf_linear.FAULT_SAMPLES
    arena = gguf_linear.WeightArena([size] * (samples + 3))
    weights = [arena.take(size) for _ in range(samples + 3)]
    assert "hg" in _vm_flags(weights[0].data_ptr()) and "hg" in _vm_flags(weights[samples - 1].data_ptr())
    later = _vm_flags(weights[samples].data_ptr() + gguf_linear.HUGE_PAGE_BYTES)
    assert ("nh" in later and "hg" not in later) if slow else ("hg" in later)
    weights[-1].fill_(7)  # the mapping is whole and writable on both sides of the advice
    assert int(weights[-1][-1]) == 7 and int(weights[0][0]) == 0


def _peak_kib() -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))


def test_packing_lets_go_of_the_file_pages_as_it_goes(tmp_path):
    """Packing a memory-mapped weight from a real file (the loader's way: release hands the
    packed chunks' pages back) never holds the weight twice: the peak grows by about one
    chunk, not by the weight's size, and none of its file pages stay resident."""
    if native() is None:
        pytest.skip("no native kernels")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets this process's peak RSS (VmHWM), Linux
    except OSError:
        pytest.skip("no /proc/self/clear_refs: peak RSS can't be reset here")
    n, k = 8192, 4096  # 18 MiB of Q4_0, chunks of PACK_CHUNK_BYTES (4 MiB)
    data = np.random.default_rng(5).integers(0, 256, n * k // 32 * 18, dtype=np.uint8).tobytes()
    path = tmp_path / "big.gguf"
    path.write_bytes(build_gguf(tensors=[("w", [k, n], int(Q.Q4_0), 0)], data=data))
    file = GGUFFile(path)
    layer = GGUFLinear(file.raw("w"), int(Q.Q4_0), n, k, pack=False)
    assert layer.raw.sum().item() > 0  # every page read: resident
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _peak_kib()
    view = file.raw("w")
    layer.pack(release=lambda part, start, nbytes: file.release("w", start, nbytes))
    grown = _peak_kib() - before
    assert grown < 0.5 * len(data) / 1024, f"peak grew by {grown} KiB packing {len(data) // 1024} KiB"
    assert resident_kib(view.data_ptr()) <= 8  # at most the partial pages at its ends


def kquant_minimums(raw: torch.Tensor, qtype, n: int, k: int) -> torch.Tensor:
    """The share of a k-quant weight (float64 [n, k]) that the kernels take on x's float sums:
    gguf's decode of the same blocks with every quant set to 0, -dmin * m per value for the
    minimums of Q2_K, Q4_K and Q5_K, and -32 (Q6_K) or -4 (Q3_K) * d * scale for the packed
    types whose values are kept unsigned; 0 for IQ4_XS, which has neither."""
    if qtype == Q.IQ4_XS:
        return torch.zeros(n, k, dtype=torch.float64)
    block, quant_bytes = {Q.Q2_K: (84, slice(16, 80)), Q.Q3_K: (110, slice(0, 96)), Q.Q4_K: (144, slice(16, None)),
                          Q.Q5_K: (176, slice(16, None)), Q.Q6_K: (210, slice(0, 192))}[qtype]
    zeroed = raw.numpy().reshape(-1, block).copy()
    zeroed[:, quant_bytes] = 0  # Q5_K: the fifth bits too
    return -torch.from_numpy(quants.dequantize(zeroed.reshape(n, -1), qtype)).double()


def int8_terms(x: torch.Tensor, terms: int, block: int = 32) -> torch.Tensor:
    """x as the integer kernels carry it (float64), after checking how they round it: per block
    of values (32 for the packed types, 256 for k-quants) the first term has scale
    d = max|x| / 127 and values round(x / d) in [-127, 127]; term t rounds what the ones before
    missed (computed in float32, as the kernel does) with scale d / 128^t, values in [-64, 64]."""
    q, d = native().quantize_q8(x, block, terms)
    blocks = x.double().view(x.shape[0], -1, block)
    assert torch.allclose(d[:, 0].double(), blocks.abs().amax(-1) / 127, rtol=1e-6, atol=0)
    total, rest = 0, x.view_as(blocks)
    for t in range(terms):
        assert torch.equal(d[:, t], d[:, 0] / 128**t)  # powers of two: exact
        assert q[:, t].abs().max() <= (127 if t == 0 else 64)
        step = d[:, t, :, None].double()
        term = q[:, t].double().view_as(blocks) * step
        # round to nearest: off by at most half a step (plus float32 slack on rest * (1/d))
        assert ((term - rest.double()).abs() <= step * (0.5 + 1e-5)).all()
        total = total + term
        rest = (rest.double() - term).float()  # one rounding, as the kernel's multiply-add
    return total.view_as(x)


def test_native_kernels_build():
    if not llamaherd.quant.kernels._cpu_supports_avx2():
        pytest.skip("no AVX2/FMA/F16C: the torch fallback is used")
    assert native() is not None


def test_old_kernel_builds_are_removed(tmp_path):
    from llamaherd.quant import kernels

    folders = [tmp_path / f"{kernels.NAME}-{i:016x}" for i in range(6)]
    for age, folder in enumerate(folders):  # folders[0] newest ... folders[5] oldest
        (folder / "sub").mkdir(parents=True)
        os.utime(folder, (1e9 - age * 1000, 1e9 - age * 1000))
    unrelated = tmp_path / "other_extension"
    unrelated.mkdir()
    os.utime(unrelated, (1, 1))
    current = folders[3]  # just built (its mtime doesn't matter)
    kernels._remove_old_builds(current)
    kept = {p.name for p in tmp_path.iterdir()}
    assert kept == {current.name, folders[0].name, folders[1].name, unrelated.name}


def test_gguf_embedding_decodes_only_rows():
    w = np.random.default_rng(1).standard_normal((50, 64), dtype=np.float32)
    raw = gguf_bytes(w, Q.Q8_0)
    emb = GGUFEmbedding(raw, int(Q.Q8_0), 50, 64)
    ids = torch.tensor([[3, 49, 0], [7, 7, 1]])
    assert torch.equal(emb(ids), dequantize(raw, int(Q.Q8_0), (50, 64))[ids])
    assert emb.weight.dtype == torch.float32 and emb.weight.numel() == 0


def test_int8_linear_per_channel():
    w = torch.randn(48, 96)
    layer = Int8Linear(w)
    assert layer.weight.dtype == torch.int8 and layer.scales.shape == (48,)
    x = torch.randn(5, 96)
    dequant = layer.weight.float() * layer.scales[:, None]
    assert (dequant - w).abs().max() <= layer.scales.max() / 2 + 1e-6  # rounding error at most half a step
    assert torch.allclose(layer(x), x @ dequant.t(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("group", [32, 64])
def test_int4_linear_groups(group):
    w = torch.randn(64, 256)
    layer = Int4Linear(w, group)
    dequant = layer.dequantized()
    step = layer.scales_and_zeros[..., 0].t().repeat_interleave(group, 1)
    assert ((dequant - w).abs() <= step / 2 + 1e-5).all()
    x = torch.randn(3, 256)
    assert torch.allclose(layer(x), x @ dequant.t(), atol=1e-3, rtol=1e-4)


def test_int4_groups_of_32_are_q4_1_blocks():
    """--quantize int4 (groups of 32) writes Q4_1 blocks: gguf's own decoder reads them back
    within half a step of the float weight (plus the fp16 rounding of the minimum)."""
    from llamaherd.quant.linear import q4_1_blocks

    w = torch.randn(16, 128)
    raw = q4_1_blocks(w)
    decoded = torch.from_numpy(quants.dequantize(raw.numpy(), Q.Q4_1)).view(16, 128)
    groups = w.view(16, 4, 32)
    step = ((groups.amax(-1) - groups.amin(-1)) / 15).repeat_interleave(32, -1).view(16, 128)
    assert ((decoded - w).abs() <= step / 2 + 1e-3 * w.abs().max()).all()


def test_q4_0_and_q4_1_map_exactly_onto_int4_groups():
    """Documents the int4 kernel's convention: w = (q - 8) * scale + zero (Q4_1: zero = m + 8d)."""
    n, k = 32, 128
    w = np.random.default_rng(2).standard_normal((n, k), dtype=np.float32)
    raw = gguf_bytes(w, Q.Q4_1)
    blocks = raw.view(n, k // 32, 20)
    d = blocks[..., 0:2].contiguous().view(torch.float16).float().squeeze(-1)
    m = blocks[..., 2:4].contiguous().view(torch.float16).float().squeeze(-1)
    qs = blocks[..., 4:]
    q = torch.cat((qs & 15, qs >> 4), -1).reshape(n, k).int()
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    sz = torch.stack((d, m + 8 * d), -1).transpose(0, 1).contiguous()
    x = torch.randn(2, k)
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, sz)
    assert torch.allclose(y, x @ dequantize(raw, int(Q.Q4_1), (n, k)).t(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["float", "int8", "int4"])
def test_load_with_quantize(tmp_path, mode):
    hf = random_hf_llama(seed=5, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    path = write_gguf_from_hf(hf, tmp_path / "m.gguf")
    ref = llamaherd.load(path)
    llm = llamaherd.load(path, quantize=mode)
    kinds = {type(m).__name__ for m in llm.model.modules()}
    if mode == "int8":
        assert "Int8Linear" in kinds and "Linear" not in kinds
    if mode == "int4":  # groups of 32: Q4_1 blocks on the native kernels, else torch's int4 kernel
        assert "Int4Linear" in kinds or any(
            isinstance(m, GGUFLinear) and m.ggml_type == int(Q.Q4_1) for m in llm.model.modules())
    ids = list(range(3, 40))
    a, b = ref.logits(ids), llm.logits(ids)
    rel = ((a - b).norm() / a.norm()).item()
    # random N(0, 0.2) weights amplify rounding through the layers; quality on a real model is
    # checked by perplexity (test_perplexity.py, benchmarks/compare.py)
    assert rel < {"float": 1e-6, "int8": 0.06, "int4": 0.6}[mode]


def test_gguf_q8_0_file_keeps_blocks_and_matches_float(tmp_path):
    """A quantized GGUF runs on its own bytes (no float copy) and equals the float path."""
    from tests.hf_models import write_gguf_from_hf as write

    hf = random_hf_llama(seed=6, num_attention_heads=4, num_key_value_heads=2, hidden_size=64, intermediate_size=128)
    path = write(hf, tmp_path / "f16.gguf", dtype="f16")
    fast, plain = llamaherd.load(path), llamaherd.load(path, quantize="float")
    assert isinstance(fast.model.layers[0].attention.wq, GGUFLinear)
    ids = list(range(3, 30))
    assert (fast.logits(ids) - plain.logits(ids)).abs().max().item() < 1e-4


def test_gguf_bf16_file_runs_on_the_bf16_kernels_with_transformers_answers(tmp_path):
    """BF16 GGUF weights stay as the file holds them, on the 16-bit kernels; the logits are
    those of transformers with the same bf16-rounded weights in float32."""
    from tests.hf_models import write_gguf_from_hf as write

    hf = random_hf_llama(seed=8, num_attention_heads=4, num_key_value_heads=2, hidden_size=64, intermediate_size=128)
    path = write(hf, tmp_path / "bf16.gguf", dtype="bf16")
    llm = llamaherd.load(path)
    linears = [m for m in llm.model.modules() if isinstance(m, GGUFLinear)]
    assert linears and all(m.ggml_type == int(Q.BF16) for m in linears)
    with torch.no_grad():  # the reference: transformers on the weights as the file holds them
        for p in hf.parameters():
            if p.dim() == 2:
                p.copy_(p.to(torch.bfloat16).float())
        ids = list(range(3, 30))
        expected = hf(torch.tensor([ids])).logits[0]
    assert (llm.logits(ids) - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["F32", "F16", "BF16"])
def test_float_kernels_for_every_row_count_and_length(name):
    """The float kernels sum each row of x in up to four chains of 8-value vectors, then the
    values after the last whole step a vector at a time: lengths 8 (no whole step), 40 and 48
    (a tail, or none, for each number of chains), 1 to 9 rows of x, against float64."""
    if native() is None:
        pytest.skip("no native kernels here")
    n, rng = 24, np.random.default_rng(6)
    for k in (8, 40, 48):
        raw = gguf_bytes(rng.standard_normal((n, k), dtype=np.float32), TYPES[name])
        w = dequantize(raw, int(TYPES[name]), (n, k)).double()
        for m in range(1, 10):
            x = torch.randn(m, k)
            expected = x.double() @ w.t()
            got = native().gemm_float(x, raw, int(TYPES[name]), n).double()
            assert (got - expected).abs().max().item() < 1e-5 * expected.abs().max().item(), (k, m)


@pytest.mark.parametrize("name", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("rows", [2, 12])
def test_float_rows_of_any_length(name, rows):
    """The float kernels take rows of whole 8-value vectors; other lengths take the torch path."""
    n, k = 24, 36
    raw = gguf_bytes(np.random.default_rng(5).standard_normal((n, k), dtype=np.float32), TYPES[name])
    layer = GGUFLinear(raw, int(TYPES[name]), n, k)
    x = torch.randn(rows, k)
    expected = x.double() @ dequantize(raw, int(TYPES[name]), (n, k)).double().t()
    assert (layer(x).double() - expected).abs().max().item() < 1e-5 * expected.abs().max().item()
