"""llamaherd.quant.ggml_dequant against the `gguf` package's numpy reference decoder.

Reference values come from `gguf.quants.dequantize`. Our decoder follows ggml's
operation order (e.g. `(d * sc) * q - dmin * m`, all in float32), as does the
reference, so results are expected to be bit-identical; block types are still compared
with a tolerance of a few float32 ulps (rtol=1e-6, atol=1e-7 on values of order 1) so a
future reordering that changes only the last bit (e.g. an FMA) doesn't fail, while any
layout mistake (wrong nibble, scale or bit) still changes values by far more.
"""

from __future__ import annotations

import os
import time
import warnings

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize as ref_dequantize
from gguf.quants import quantize as ref_quantize

from llamaherd.quant import ggml_dequant
from llamaherd.quant.ggml_dequant import dequantize, split_q4_0, split_q4_1, split_q8_0
from llamaherd.quant.ggml_types import BLOCK_GEOMETRY, GGMLType

MODEL = "/work/shared/assets/models/SmolLM2-135M-Instruct.Q4_1.gguf"

# Types gguf can quantize (so we test on real quantizer output) and types it can only
# decode (k-quants, IQ4: we test on random block bytes with sane fp16 scales).
QUANTIZABLE = [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1]
K_QUANTS = [QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.IQ4_NL, QT.IQ4_XS]
EXACT = {QT.F32, QT.F16, QT.BF16}

# Byte offsets of the fp16 super-block scales (d, and dmin where present) in k-quant blocks.
K_FP16_OFFSETS = {QT.Q2_K: (80, 82), QT.Q3_K: (108,), QT.Q4_K: (0, 2), QT.Q5_K: (0, 2), QT.Q6_K: (208,),
                  QT.IQ4_NL: (0,), QT.IQ4_XS: (0,)}


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def random_k_blocks(qtype: QT, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Random k-quant blocks: random quant and scale-index bytes, fp16 d/dmin in [-1, 1]."""
    _, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for off in K_FP16_OFFSETS[qtype]:
        scale = rng.uniform(-1, 1, size=(n_blocks, 1)).astype(np.float16)
        blocks[:, off : off + 2] = scale.view(np.uint8)
    return blocks


def encode(qtype: QT, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Bytes (flat uint8) of a tensor of `shape` in `qtype`."""
    if qtype in K_QUANTS:
        block_elems, _ = gguf.GGML_QUANT_SIZES[qtype]
        return random_k_blocks(qtype, int(np.prod(shape)) // block_elems, rng).reshape(-1)
    values = rng.standard_normal(shape).astype(np.float32)
    return np.ascontiguousarray(ref_quantize(values, qtype)).view(np.uint8).reshape(-1)


def reference(raw: np.ndarray, qtype: QT, shape: tuple[int, ...]) -> torch.Tensor:
    if qtype in EXACT:
        out = ref_dequantize(raw, qtype)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).reshape(shape)
    rows = raw.reshape(-1, gguf.quants.quant_shape_to_byte_shape(shape, qtype)[-1])
    return torch.from_numpy(ref_dequantize(rows, qtype)).reshape(shape)


def check(ours: torch.Tensor, ref: torch.Tensor, qtype: QT) -> None:
    assert ours.dtype == torch.float32
    assert ours.shape == ref.shape
    if qtype in EXACT:
        assert torch.equal(ours, ref)
    else:
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)


def as_raw(array: np.ndarray) -> torch.Tensor:
    """Zero-copy uint8 torch view (silences the warning for read-only memory maps)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array.view(np.uint8).reshape(-1))


# --- every type, against the reference ---------------------------------------------


@pytest.mark.parametrize("qtype", QUANTIZABLE + K_QUANTS, ids=lambda t: t.name)
@pytest.mark.parametrize(
    "shape", [(512,), (8, 512), (3, 5, 256)], ids=["1d", "rows", "3d"]
)
def test_matches_reference(qtype: QT, shape: tuple[int, ...]) -> None:
    raw = encode(qtype, shape, _rng(int(qtype) * 7 + len(shape)))
    ours = dequantize(torch.from_numpy(raw), int(qtype), shape)
    check(ours, reference(raw, qtype, shape), qtype)


@pytest.mark.parametrize("qtype", QUANTIZABLE, ids=lambda t: t.name)
def test_quantizer_roundtrip_is_close(qtype: QT) -> None:
    """Sanity beyond the reference: decoded values approximate what was quantized."""
    values = _rng(1).standard_normal((4, 256)).astype(np.float32)
    raw = np.ascontiguousarray(ref_quantize(values, qtype)).view(np.uint8).reshape(-1)
    ours = dequantize(torch.from_numpy(raw), int(qtype), values.shape)
    # 4-bit quants of N(0,1) blocks err by at most half a step of (max|x|)/8 ~ 0.25.
    assert (ours - torch.from_numpy(values)).abs().max() < 0.3


@pytest.mark.parametrize("qtype", K_QUANTS, ids=lambda t: t.name)
def test_k_quant_many_blocks(qtype: QT) -> None:
    """Enough random blocks that every 6-bit scale and min, including the split ones
    of sub-blocks 4-7, takes every value 0..63 somewhere."""
    shape = (64, 2048)  # 512 super-blocks
    raw = encode(qtype, shape, _rng(2))
    blocks = torch.from_numpy(raw).view(-1, gguf.GGML_QUANT_SIZES[qtype][1])
    if qtype in (QT.Q4_K, QT.Q5_K):
        for field in ggml_dequant._k4_scales_mins(blocks[:, 4:16]):
            assert set(field[:, 4:].unique().tolist()) == set(range(64))
    if qtype == QT.Q3_K:
        assert set(ggml_dequant._k3_scales(blocks[:, 96:108]).unique().tolist()) == set(range(-32, 32))
    ours = dequantize(torch.from_numpy(raw), int(qtype), shape)
    check(ours, reference(raw, qtype, shape), qtype)


# --- shapes, chunking and buffer handling --------------------------------------------


@pytest.mark.parametrize("qtype", [QT.Q4_1, QT.Q5_0, QT.Q6_K], ids=lambda t: t.name)
def test_chunked_decode_matches_single_chunk(qtype: QT, monkeypatch: pytest.MonkeyPatch) -> None:
    shape = (7, 768)  # 21 sub-blocks of 256 or 168 of 32: chunks won't divide evenly
    raw = torch.from_numpy(encode(qtype, shape, _rng(3)))
    whole = dequantize(raw, int(qtype), shape)
    block_elems, _ = BLOCK_GEOMETRY[GGMLType(int(qtype))]
    monkeypatch.setattr(ggml_dequant, "_CHUNK_OUT_BYTES", 5 * block_elems * 4)  # 5 blocks a chunk
    assert torch.equal(dequantize(raw, int(qtype), shape), whole)


@pytest.mark.parametrize("qtype", [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_K], ids=lambda t: t.name)
def test_does_not_write_or_alias_raw(qtype: QT) -> None:
    shape = (2, 256)
    raw = torch.from_numpy(encode(qtype, shape, _rng(4)))
    before = raw.clone()
    out = dequantize(raw, int(qtype), shape)
    out.fill_(123.0)
    assert torch.equal(raw, before)


def test_raw_at_odd_offset() -> None:
    """A view starting at an odd byte (not 2/4-aligned) still decodes."""
    shape = (3, 64)
    for qtype in (QT.F32, QT.F16, QT.Q4_0):
        raw = encode(qtype, shape, _rng(5))
        padded = torch.zeros(raw.size + 1, dtype=torch.uint8)
        padded[1:] = torch.from_numpy(raw)
        check(dequantize(padded[1:], int(qtype), shape), reference(raw, qtype, shape), qtype)


def test_empty_tensor() -> None:
    out = dequantize(torch.empty(0, dtype=torch.uint8), int(QT.Q4_0), (0, 64))
    assert out.shape == (0, 64) and out.dtype == torch.float32


# --- errors --------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [-1, 1, -18])
def test_wrong_byte_count(delta: int) -> None:
    raw = torch.from_numpy(encode(QT.Q4_0, (2, 64), _rng(6)))
    bad = torch.zeros(raw.numel() + delta, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"needs 72 bytes, got"):
        dequantize(bad, int(QT.Q4_0), (2, 64))


def test_unsupported_type() -> None:
    with pytest.raises(ValueError, match="type 16"):  # IQ2_XXS
        dequantize(torch.zeros(66, dtype=torch.uint8), int(QT.IQ2_XXS), (256,))
    with pytest.raises(ValueError, match="type 99"):
        dequantize(torch.zeros(4, dtype=torch.uint8), 99, (1,))


def test_row_not_multiple_of_block() -> None:
    with pytest.raises(ValueError, match="multiple"):
        dequantize(torch.zeros(36, dtype=torch.uint8), int(QT.Q4_0), (2, 48))


def test_raw_must_be_flat_uint8() -> None:
    with pytest.raises(ValueError, match="1-D uint8"):
        dequantize(torch.zeros(8, dtype=torch.int8), int(QT.F16), (4,))
    with pytest.raises(ValueError, match="1-D uint8"):
        dequantize(torch.zeros(2, 4, dtype=torch.uint8), int(QT.F16), (4,))


# --- per-block splits ----------------------------------------------------------------


def test_split_q8_0() -> None:
    raw = torch.from_numpy(encode(QT.Q8_0, (3, 96), _rng(7)))
    scales, qs = split_q8_0(raw, 3, 96)
    assert scales.dtype == torch.float16 and scales.shape == (3, 3)
    assert qs.dtype == torch.int8 and qs.shape == (3, 3, 32)
    rebuilt = (qs.float() * scales.float().unsqueeze(-1)).reshape(3, 96)
    assert torch.equal(rebuilt, dequantize(raw, int(QT.Q8_0), (3, 96)))


def test_split_q4_0() -> None:
    raw = torch.from_numpy(encode(QT.Q4_0, (2, 128), _rng(8)))
    scales, qs = split_q4_0(raw, 2, 128)
    assert scales.dtype == torch.float16 and scales.shape == (2, 4)
    assert qs.dtype == torch.uint8 and qs.shape == (2, 4, 32) and int(qs.max()) <= 15
    rebuilt = ((qs.float() - 8) * scales.float().unsqueeze(-1)).reshape(2, 128)
    assert torch.equal(rebuilt, dequantize(raw, int(QT.Q4_0), (2, 128)))


def test_split_q4_1() -> None:
    raw = torch.from_numpy(encode(QT.Q4_1, (2, 64), _rng(9)))
    scales, mins, qs = split_q4_1(raw, 2, 64)
    assert scales.shape == mins.shape == (2, 2) and mins.dtype == torch.float16
    assert qs.dtype == torch.uint8 and qs.shape == (2, 2, 32) and int(qs.max()) <= 15
    rebuilt = (qs.float() * scales.float().unsqueeze(-1) + mins.float().unsqueeze(-1)).reshape(2, 64)
    assert torch.equal(rebuilt, dequantize(raw, int(QT.Q4_1), (2, 64)))


def test_split_checks_size() -> None:
    with pytest.raises(ValueError, match="bytes"):
        split_q8_0(torch.zeros(33, dtype=torch.uint8), 1, 32)


# --- real model tensors --------------------------------------------------------------


@pytest.fixture(scope="module")
def model_reader() -> gguf.GGUFReader:
    if not os.path.exists(MODEL):
        pytest.skip(f"{MODEL} not available")
    return gguf.GGUFReader(MODEL)


@pytest.mark.parametrize(
    "name",
    [
        "token_embd.weight",  # Q8_0, 49152 x 576
        "blk.0.ffn_down.weight",  # Q4_1, 576 x 1536
        "blk.0.attn_k.weight",  # Q4_1, 192 x 576
        "blk.29.ffn_up.weight",  # Q4_1
        "blk.0.attn_norm.weight",  # F32
        "output_norm.weight",  # F32
    ],
)
def test_real_model_tensor(model_reader: gguf.GGUFReader, name: str) -> None:
    tensor = next(t for t in model_reader.tensors if t.name == name)
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF ne order -> torch order
    qtype = QT(tensor.tensor_type)
    # tensor.data is a read-only view of the memory-mapped file: decoding must not write.
    ours = dequantize(as_raw(tensor.data), int(qtype), shape)
    ref = torch.from_numpy(np.asarray(ref_dequantize(tensor.data, qtype), dtype=np.float32)).reshape(shape)
    check(ours, ref, qtype)


def test_real_model_has_expected_types(model_reader: gguf.GGUFReader) -> None:
    types = {QT(t.tensor_type) for t in model_reader.tensors}
    assert types == {QT.Q4_1, QT.Q8_0, QT.F32}


# --- speed (reported, not asserted) ----------------------------------------------------


def test_q4_1_decode_speed(capsys: pytest.CaptureFixture[str]) -> None:
    rows, cols = 49152, 576
    block_elems, block_bytes = BLOCK_GEOMETRY[GGMLType.Q4_1]
    blocks = _rng(10).integers(0, 256, size=(rows * cols // block_elems, block_bytes), dtype=np.uint8)
    for off in (0, 2):
        blocks[:, off : off + 2] = _rng(off).uniform(-1, 1, (len(blocks), 1)).astype(np.float16).view(np.uint8)
    raw = torch.from_numpy(blocks.reshape(-1))
    dequantize(raw, int(QT.Q4_1), (rows, cols))  # warm-up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        out = dequantize(raw, int(QT.Q4_1), (rows, cols))
        times.append(time.perf_counter() - start)
    best = min(times)
    assert out.shape == (rows, cols)
    with capsys.disabled():
        print(
            f"\nQ4_1 {rows}x{cols} decode: {best * 1e3:.1f} ms, "
            f"{raw.numel() / best / 1e6:.0f} MB/s of Q4_1 in, {out.numel() * 4 / best / 1e6:.0f} MB/s of float32 out "
            f"({torch.get_num_threads()} threads)"
        )
