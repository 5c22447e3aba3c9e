"""Decode GGML tensors (float and block-quantized) into float32 torch tensors.

`dequantize` is the entry point. Each block type has a field splitter that turns a
`[..., block_bytes]` uint8 tensor into its fields (fp16 scales, integer quants), and a
decoder that turns those into `[..., block_elems]` float32 values. The public
`split_q8_0` / `split_q4_0` / `split_q4_1` expose the fields per row for kernels that
compute on the integer quants directly.

Everything is vectorised over blocks, and large tensors are decoded a chunk of blocks at
a time straight into the output, so temporaries stay around `_CHUNK_OUT_BYTES`.
The arithmetic follows ggml's reference `dequantize_row_*` in the same operation order
(e.g. `(d * sc) * q - dmin * m`), so results match it bit for bit.

`raw` may be a zero-copy view of a read-only memory map: nothing here writes to it, and
the result never aliases it.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .ggml_types import BLOCK_GEOMETRY, GGMLType, tensor_nbytes, type_name

# Output bytes decoded per chunk; bounds the uint8/float temporaries to a few times this.
_CHUNK_OUT_BYTES = 16 << 20

QK_K = 256  # values per k-quant super-block


def dequantize(raw: torch.Tensor, ggml_type: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Decode `raw` (the tensor's bytes, 1-D uint8) of `ggml_type` into float32 of `shape`.

    `shape` is in torch order: the last dimension is contiguous (GGUF's ne[0]).
    Raises ValueError on an unsupported type, a row length that doesn't split into
    blocks, or a byte count that doesn't match the shape.
    """
    shape = tuple(int(n) for n in shape)
    gtype = _check_input(raw, ggml_type, shape)
    if gtype == GGMLType.F32:
        return _reinterpret(raw, torch.float32).clone().reshape(shape)
    if gtype in (GGMLType.F16, GGMLType.BF16):
        dtype = torch.float16 if gtype == GGMLType.F16 else torch.bfloat16
        return _reinterpret(raw, dtype).to(torch.float32).reshape(shape)

    block_elems, block_bytes = BLOCK_GEOMETRY[gtype]
    decode = _BLOCK_DECODERS[gtype]
    blocks = raw.reshape(-1, block_bytes)
    out = torch.empty(blocks.shape[0], block_elems, dtype=torch.float32)
    step = max(1, _CHUNK_OUT_BYTES // (block_elems * 4))
    for start in range(0, blocks.shape[0], step):
        decode(blocks[start : start + step], out[start : start + step])
    return out.reshape(shape)


def _check_input(raw: torch.Tensor, ggml_type: int, shape: tuple[int, ...]) -> GGMLType:
    if ggml_type not in BLOCK_GEOMETRY:
        supported = ", ".join(t.name for t in BLOCK_GEOMETRY)
        raise ValueError(f"cannot dequantize {type_name(ggml_type)}; supported types: {supported}")
    if raw.dtype != torch.uint8 or raw.dim() != 1:
        raise ValueError(f"raw must be a 1-D uint8 tensor, got {raw.dtype} of shape {tuple(raw.shape)}")
    if any(n < 0 for n in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    row_len = shape[-1] if shape else 1
    expected = tensor_nbytes(ggml_type, math.prod(shape), row_len)
    if raw.numel() != expected:
        raise ValueError(
            f"{type_name(ggml_type)} tensor of shape {shape} needs {expected} bytes, got {raw.numel()}"
        )
    return GGMLType(ggml_type)


def _reinterpret(raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """View uint8 bytes as `dtype` (little-endian, like GGUF and every torch CPU target)."""
    if not raw.is_contiguous() or raw.storage_offset() % dtype.itemsize:
        raw = raw.clone()  # view(dtype) needs an aligned, contiguous start
    return raw.view(dtype)


# --- block fields -------------------------------------------------------------------
# Each splitter takes uint8 `[..., block_bytes]` (any leading dims) and returns views or
# small copies of the fields. fp16 fields sit at even offsets inside blocks of even size,
# but the 2-byte slices are strided, so they are copied (2/18 of the data at most).


def _f16(field: torch.Tensor) -> torch.Tensor:
    """`[..., 2]` uint8 -> `[...]` float16."""
    return field.contiguous().view(torch.float16).squeeze(-1)


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """`[..., n]` uint8 -> `[..., 2n]`: the n low nibbles, then the n high nibbles.

    This is how Q4_0/Q4_1/Q5_* pack 32 values in 16 bytes (value j in the low nibble
    of byte j, value j+16 in the high nibble), and how k-quants pack two 32-value
    sub-blocks into 32 bytes.
    """
    return torch.cat((packed & 0x0F, packed >> 4), dim=-1)


def _bits(packed: torch.Tensor) -> torch.Tensor:
    """`[..., n]` uint8 -> `[..., 8n]` of 0/1, bit k of byte b at position 8b + k.

    This reads Q5_0/Q5_1's little-endian uint32 `qh` as "bit j is value j's 5th bit".
    """
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((packed.unsqueeze(-1) >> shifts) & 1).flatten(-2)


def _q8_0_fields(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """block_q8_0 = {f16 d; int8 qs[32]}; value = d * qs."""
    return _f16(blocks[..., 0:2]), blocks[..., 2:34].view(torch.int8)


def _q4_0_fields(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """block_q4_0 = {f16 d; u8 qs[16]}; value = d * (nibble - 8). Returns (d, nibbles 0..15)."""
    return _f16(blocks[..., 0:2]), _nibbles(blocks[..., 2:18])


def _q4_1_fields(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """block_q4_1 = {f16 d; f16 m; u8 qs[16]}; value = d * nibble + m. Returns (d, m, nibbles)."""
    return _f16(blocks[..., 0:2]), _f16(blocks[..., 2:4]), _nibbles(blocks[..., 4:20])


def _q5_quants(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """5-bit quants 0..31: low 4 bits as in Q4, 5th bit of value j is bit j of `qh`."""
    return _nibbles(qs) | (_bits(qh) << 4)


# --- per-row splits for kernels ------------------------------------------------------


def _rows_of_blocks(raw: torch.Tensor, gtype: GGMLType, n_rows: int, row_len: int) -> torch.Tensor:
    _check_input(raw, gtype, (n_rows, row_len))
    block_elems, block_bytes = BLOCK_GEOMETRY[gtype]
    return raw.view(n_rows, row_len // block_elems, block_bytes)


def split_q8_0(raw: torch.Tensor, n_rows: int, row_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Q8_0 bytes -> (scales f16 [rows, blocks], qs int8 [rows, blocks, 32]).

    `qs` is a view of `raw` (read-only if `raw` is); value = scale * qs.
    """
    return _q8_0_fields(_rows_of_blocks(raw, GGMLType.Q8_0, n_rows, row_len))


def split_q4_0(raw: torch.Tensor, n_rows: int, row_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_0 bytes -> (scales f16 [rows, blocks], qs uint8 0..15 [rows, blocks, 32]);
    value = scale * (qs - 8)."""
    return _q4_0_fields(_rows_of_blocks(raw, GGMLType.Q4_0, n_rows, row_len))


def split_q4_1(
    raw: torch.Tensor, n_rows: int, row_len: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_1 bytes -> (scales f16, mins f16 [rows, blocks], qs uint8 0..15 [rows, blocks, 32]);
    value = scale * qs + min."""
    return _q4_1_fields(_rows_of_blocks(raw, GGMLType.Q4_1, n_rows, row_len))


# --- 32-value block decoders: `blocks` uint8 [n, block_bytes] -> `out` float32 [n, 32] ---
# Quants are copied into `out` first and scaled in place, so the only large temporary is
# the uint8 quants.


def _decode_q8_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    d, qs = _q8_0_fields(blocks)
    out.copy_(qs).mul_(d.float().unsqueeze(-1))


def _decode_q4_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    d, qs = _q4_0_fields(blocks)
    out.copy_(qs).sub_(8).mul_(d.float().unsqueeze(-1))


def _decode_q4_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    d, m, qs = _q4_1_fields(blocks)
    out.copy_(qs).mul_(d.float().unsqueeze(-1)).add_(m.float().unsqueeze(-1))


def _decode_q5_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # block_q5_0 = {f16 d; u8 qh[4]; u8 qs[16]}; value = d * (q - 16)
    d = _f16(blocks[..., 0:2]).float().unsqueeze(-1)
    out.copy_(_q5_quants(blocks[..., 2:6], blocks[..., 6:22])).sub_(16).mul_(d)


def _decode_q5_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # block_q5_1 = {f16 d; f16 m; u8 qh[4]; u8 qs[16]}; value = d * q + m
    d = _f16(blocks[..., 0:2]).float().unsqueeze(-1)
    m = _f16(blocks[..., 2:4]).float().unsqueeze(-1)
    out.copy_(_q5_quants(blocks[..., 4:8], blocks[..., 8:24])).mul_(d).add_(m)


# --- k-quants: 256-value super-blocks of sub-blocks, each with its own scale ---------


def _k4_scales_mins(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 12 bytes -> 8 six-bit scales and 8 six-bit mins (ggml get_scale_min_k4).

    Sub-blocks 0-3 keep scale and min in the low 6 bits of bytes 0-3 and 4-7. Sub-blocks
    4-7 keep their low 4 bits in bytes 8-11 (scale low nibble, min high nibble) and their
    top 2 bits in the spare top 2 bits of bytes 0-3 (scale) and 4-7 (min):

        byte 0..3   EEAAAAAA  (A: scale 0-3,  E: scale 4-7 bits 4-5)
        byte 4..7   eeaaaaaa  (a: min 0-3,    e: min 4-7 bits 4-5)
        byte 8..11  eeeeEEEE  (scale 4-7 bits 0-3, min 4-7 bits 0-3)
    """
    lo_sc, lo_m, hi = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    scales = torch.cat((lo_sc & 0x3F, (hi & 0x0F) | ((lo_sc >> 6) << 4)), dim=-1)
    mins = torch.cat((lo_m & 0x3F, (hi >> 4) | ((lo_m >> 6) << 4)), dim=-1)
    return scales, mins


def _k4_sub_scales(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K header {f16 d; f16 dmin; u8 scales[12]} -> per-sub-block (d*sc, dmin*m), [n, 8, 1]."""
    d = _f16(blocks[..., 0:2]).float().unsqueeze(-1)
    dmin = _f16(blocks[..., 2:4]).float().unsqueeze(-1)
    sc, m = _k4_scales_mins(blocks[..., 4:16])
    return (d * sc).unsqueeze(-1), (dmin * m).unsqueeze(-1)


def _k4_low_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """128 bytes -> [n, 8, 32]: each 32-byte group holds sub-block 2j in its low nibbles
    and sub-block 2j+1 in its high nibbles."""
    return _nibbles(qs.unflatten(-1, (4, 32))).unflatten(-1, (2, 32)).flatten(-3, -2)


def _decode_q4_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # block_q4_K = {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}; value = d*sc * q - dmin*m
    scale, offset = _k4_sub_scales(blocks)
    sub = out.view(-1, 8, 32)
    sub.copy_(_k4_low_nibbles(blocks[..., 16:144])).mul_(scale).sub_(offset)


def _decode_q5_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # block_q5_K = {f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}:
    # bit u of qh[l] is the 5th bit of value l of sub-block u.
    scale, offset = _k4_sub_scales(blocks)
    high = _bits(blocks[..., 16:48]).unflatten(-1, (32, 8)).transpose(-1, -2)
    sub = out.view(-1, 8, 32)
    sub.copy_(_k4_low_nibbles(blocks[..., 48:176]) | (high << 4)).mul_(scale).sub_(offset)


def _q6_k_quants(ql: torch.Tensor, qh: torch.Tensor) -> torch.Tensor:
    """Q6_K's ql[128], qh[64] -> 6-bit quants 0..63 as [n, 256] in value order.

    Each 128-value half uses 64 ql bytes and 32 qh bytes. Its four 32-value quarters k
    take low 4 bits from ql[0:32] (k=0,2) or ql[32:64] (k=1,3), low nibble for k<2 and
    high nibble for k>=2, and their top 2 bits from bits 2k..2k+1 of qh[0:32].
    """
    low = _nibbles(ql.unflatten(-1, (2, 2, 32))).unflatten(-1, (2, 32))  # [n, half, which, nibble, 32]
    low = low.transpose(-3, -2).flatten(-3, -2)  # quarter = 2 * nibble + which
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(4, 1)
    high = (qh.unflatten(-1, (2, 1, 32)) >> shifts) & 3  # [n, half, quarter, 32]
    return (low | (high << 4)).flatten(-3)


def _decode_q6_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # block_q6_K = {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}; value = d*sc * (q - 32),
    # one scale per 16 consecutive values.
    d = _f16(blocks[..., 208:210]).float().unsqueeze(-1)
    scale = (d * blocks[..., 192:208].view(torch.int8)).unsqueeze(-1)
    sub = out.view(-1, 16, 16)
    sub.copy_(_q6_k_quants(blocks[..., 0:128], blocks[..., 128:192]).view(-1, 16, 16))
    sub.sub_(32).mul_(scale)


def _k2_quants(qs: torch.Tensor) -> torch.Tensor:
    """Q2_K/Q3_K's qs[64] -> 2-bit quants 0..3 as [n, 256] in value order: value
    128h + 32j + l is bits 2j..2j+1 of qs[32h + l]."""
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(4, 1)
    return ((qs.unflatten(-1, (2, 1, 32)) >> shifts) & 3).flatten(-3)


def _decode_q2_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # block_q2_K = {u8 scales[16]; u8 qs[64]; f16 d; f16 dmin}; value = d*sc * q - dmin*m,
    # scale and min (low and high nibble of scales[g]) per 16 consecutive values g.
    d = _f16(blocks[..., 80:82]).float().unsqueeze(-1)
    dmin = _f16(blocks[..., 82:84]).float().unsqueeze(-1)
    scales = blocks[..., 0:16]
    sub = out.view(-1, 16, 16)
    sub.copy_(_k2_quants(blocks[..., 16:80]).view(-1, 16, 16))
    sub.mul_((d * (scales & 0xF)).unsqueeze(-1)).sub_((dmin * (scales >> 4)).unsqueeze(-1))


def _k3_scales(packed: torch.Tensor) -> torch.Tensor:
    """Q3_K's 12 bytes -> 16 six-bit scales (less 32): scale g's low 4 bits are the low
    (g < 8) or high (g >= 8) nibble of byte g % 8, its top 2 bits bits 2(g // 4) of byte
    8 + g % 4."""
    low = torch.cat((packed[..., 0:8] & 0xF, packed[..., 0:8] >> 4), dim=-1)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(4, 1)
    high = ((packed[..., 8:12].unsqueeze(-2) >> shifts) & 3).flatten(-2)
    return (low | (high << 4)).to(torch.int16) - 32


def _decode_q3_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # block_q3_K = {u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d}; value = d*sc * (q - 4 * (1 - h)),
    # h: bit 4h' + j of hmask[l] for value 128h' + 32j + l; one scale per 16 values.
    d = _f16(blocks[..., 108:110]).float().unsqueeze(-1)
    high = _bits(blocks[..., 0:32]).unflatten(-1, (32, 8)).transpose(-1, -2).flatten(-2)  # [n, 256]
    sub = out.view(-1, 16, 16)
    sub.copy_((_k2_quants(blocks[..., 32:96]).to(torch.int16) - 4 + 4 * high.to(torch.int16)).view(-1, 16, 16))
    sub.mul_((d * _k3_scales(blocks[..., 96:108])).unsqueeze(-1))


# --- IQ4: 4-bit indices into a fixed non-linear table of 16 int8 levels ----------------

_IQ4_LEVELS = torch.tensor([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=torch.float32)


def _decode_iq4_nl(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # block_iq4_nl = {f16 d; u8 qs[16]}; value = d * level[q], nibbles as Q4_0's
    d = _f16(blocks[..., 0:2]).float().unsqueeze(-1)
    out.copy_(_IQ4_LEVELS[_nibbles(blocks[..., 2:18]).long()]).mul_(d)


def _decode_iq4_xs(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # block_iq4_xs = {f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]}: 8 sub-blocks of 32,
    # sub-block j's 6-bit scale from nibble j of scales_l and bits 2j..2j+1 of scales_h;
    # value = (d * (scale - 32)) * level[q], each sub-block's 16 bytes nibbled as IQ4_NL's.
    d = _f16(blocks[..., 0:2]).float().unsqueeze(-1)
    high = blocks[..., 2:4].contiguous().view(torch.int16).to(torch.int32) & 0xFFFF  # [n, 1]
    low = _nibbles(blocks[..., 4:8].unsqueeze(-1)).flatten(-2).to(torch.int32)  # [n, 8]: j = 2b + nibble
    shifts = 2 * torch.arange(8, dtype=torch.int32)
    scale = low | (((high >> shifts) & 3) << 4)
    sub = out.view(-1, 8, 32)
    sub.copy_(_IQ4_LEVELS[_nibbles(blocks[..., 8:136].unflatten(-1, (8, 16))).long()])
    sub.mul_((d * (scale - 32)).unsqueeze(-1))


_BLOCK_DECODERS: dict[GGMLType, Callable[[torch.Tensor, torch.Tensor], None]] = {
    GGMLType.IQ4_NL: _decode_iq4_nl,
    GGMLType.IQ4_XS: _decode_iq4_xs,
    GGMLType.Q2_K: _decode_q2_k,
    GGMLType.Q3_K: _decode_q3_k,
    GGMLType.Q8_0: _decode_q8_0,
    GGMLType.Q4_0: _decode_q4_0,
    GGMLType.Q4_1: _decode_q4_1,
    GGMLType.Q5_0: _decode_q5_0,
    GGMLType.Q5_1: _decode_q5_1,
    GGMLType.Q4_K: _decode_q4_k,
    GGMLType.Q5_K: _decode_q5_k,
    GGMLType.Q6_K: _decode_q6_k,
}
