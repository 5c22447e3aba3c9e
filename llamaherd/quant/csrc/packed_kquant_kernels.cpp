// The k-quants Q2_K .. Q6_K in the packed 8-row layout (packed_layout.h): pack, unpack, decode
// to float32, and products in integers with x rounded to int8 in blocks of 256 (GGML's Q8_K).
#include "amx_tiles.h"
#include "packed_layout.h"

namespace llamaherd::packed {

namespace {

// ---- The k-quants in the packed 8-row layout --------------------------------------
//
// A k-quant packs a 256-value super-block at a time (block b: values 256b ..). Q4_K packs its 8
// sub-blocks of 32 each as Q4_0's chunks, their 6-bit scales and minimums one byte each:
//   Q4_K: d[8] fp16 | dmin[8] fp16 | scale[8 sub-blocks][8 rows] | min[8][8] | 8 x 4 chunks
//                                                                 (1184 bytes, the file's 1152
//                                                                 and the scales unpacked)
//   Q5_K: as Q4_K, each sub-block's 4 chunks followed by 32 bytes of its values' fifth bits:
//         byte 4r + i, bit c: the value whose low bits are chunk c's low nibble there, bit 4 + c:
//         its high nibble's                                     (1440 bytes, the file's 1408)
// Q2_K, Q3_K and Q6_K have 16 scales a super-block, one per 16 values (k16 below):
//   Q6_K: d[8] fp16 | scale[16 (16 values each)][8 rows] int8 | 8 sub-blocks of 192 bytes:
//         4 chunks of the values' low 4 bits, then 2 registers of their top 2 bits (1680 bytes)
//   Q3_K: d[8] fp16 | scale[16][8] int8 (less 32, as GGML uses it) | 8 sub-blocks of 96 bytes:
//         2 registers of the values' low 2 bits, 1 of their top bit  (912 bytes, the file's 880)
//   Q2_K: d[8] fp16 | dmin[8] fp16 | scale | min << 4 [16][8] (the file's bytes) | 8 sub-blocks
//         of 64 bytes: 2 registers of the 2-bit values                 (672 bytes, as the file)
// Values are kept unsigned, as the file's bits: u = q + 32 (Q6_K), q + 4 (Q3_K), q (Q2_K), for
// the byte multiply-adds; the kernel takes the offset back on x's float sums. Where a value's
// bits are split, the registers follow the chunks' order: Q6_K's top-bit register p serves
// chunks 2p (bits 0-3 of each byte) and 2p + 1 (bits 4-7), byte 4r + i holding the top bits of
// the values whose low bits share byte 4r + i of the chunk, the low nibble's value first. The
// 2-bit registers: the first holds, at bits 2c of byte 4r + i, the value chunk c's low nibble
// would hold, the second its high nibble's; Q3_K's top bits sit as Q5_K's fifth bits.

// Q4_K's and Q5_K's packed super-block: where its parts start, and a packed sub-block's bytes
constexpr int K4_DMIN = 16, K4_SCALES = 32, K4_MINS = 96, K4_CHUNKS = 160;
template <int64_t T> constexpr int K45_SUB = T == Q5_K ? 160 : 128;
// and Q2_K's, Q3_K's, Q6_K's (k16): scales, sub-block j at K16_SUBBLOCKS + K16_SUB * j, and the
// offset taken from the unsigned values
template <int64_t T> constexpr int K16_SCALES = T == Q2_K ? 32 : 16;
template <int64_t T> constexpr int K16_SUBBLOCKS = K16_SCALES<T> + 128;
template <int64_t T> constexpr int K16_SUB = T == Q6_K ? 192 : (T == Q3_K ? 96 : 64);
template <int64_t T> constexpr int K16_OFFSET = T == Q6_K ? 32 : (T == Q3_K ? 4 : 0);

// Q4_K, Q5_K: a GGML super-block (d, dmin | scales[12] | (Q5_K: qh[32]) | qs[128]; sub-block j:
// the low (j even) or high nibbles of qs[32 (j / 2) ..], Q5_K's fifth bits bit j of qh[..])
// into packed super-block `dst`, as row r of the 8.
template <int64_t T>
inline void pack_k45(const uint8_t* src, int r, uint8_t* dst) {
  std::memcpy(dst + 2 * r, src, 2);
  std::memcpy(dst + K4_DMIN + 2 * r, src + 2, 2);
  uint64_t scales, mins;
  scales_mins_k4(src + 4, scales, mins);
  for (int j = 0; j < 8; ++j) {
    dst[K4_SCALES + 8 * j + r] = uint8_t(scales >> (8 * j));
    dst[K4_MINS + 8 * j + r] = uint8_t(mins >> (8 * j));
  }
  const uint8_t* qs = src + (T == Q5_K ? 48 : 16);
  const __m128i mask = _mm_set1_epi8(0x0F);
  for (int c = 0; c < 4; ++c) {
    const __m128i a = _mm_loadu_si128((const __m128i*)(qs + 32 * c)), b = _mm_loadu_si128((const __m128i*)(qs + 16 + 32 * c));
    store_chunks(_mm_and_si128(a, mask), _mm_and_si128(b, mask), r, dst + K4_CHUNKS + K45_SUB<T> * (2 * c));
    store_chunks(_mm_and_si128(_mm_srli_epi16(a, 4), mask), _mm_and_si128(_mm_srli_epi16(b, 4), mask), r, dst + K4_CHUNKS + K45_SUB<T> * (2 * c + 1));
  }
  if constexpr (T == Q5_K)
    for (int j = 0; j < 8; ++j)
      for (int i = 0; i < 4; ++i) {
        uint8_t byte = 0;
        for (int c = 0; c < 4; ++c)
          byte |= uint8_t((((src[16 + 8 * c + i] >> j) & 1) << c) | (((src[16 + 8 * c + 4 + i] >> j) & 1) << (4 + c)));
        dst[K4_CHUNKS + K45_SUB<T> * j + 128 + 4 * r + i] = byte;
      }
}

// Row r's 32 values of packed sub-block j of a Q4_K or Q5_K super-block (fifth bits included).
template <int64_t T>
inline void k45_values(const uint8_t* blk, int r, int j, uint8_t v[32]) {
  const uint8_t* sub = blk + K4_CHUNKS + K45_SUB<T> * j;
  load_chunks(sub, r, v);
  if constexpr (T == Q5_K)
    for (int c = 0; c < 4; ++c)
      for (int i = 0; i < 4; ++i) {
        const uint8_t top = sub[128 + 4 * r + i];
        v[8 * c + i] |= uint8_t(((top >> c) & 1) << 4);
        v[8 * c + 4 + i] |= uint8_t(((top >> (4 + c)) & 1) << 4);
      }
}

// Q4_K, Q5_K: the GGML super-block back, its scales and minimums re-encoded in GGML's 12 bytes
// (every bit of them is a bit of a 6-bit value: the bytes come back exactly).
template <int64_t T>
inline void unpack_k45(const uint8_t* src, int r, uint8_t* dst) {
  std::memcpy(dst, src + 2 * r, 2);
  std::memcpy(dst + 2, src + K4_DMIN + 2 * r, 2);
  uint8_t sc[8], mn[8];
  for (int j = 0; j < 8; ++j) sc[j] = src[K4_SCALES + 8 * j + r], mn[j] = src[K4_MINS + 8 * j + r];
  uint8_t* packed = dst + 4;
  for (int j = 0; j < 4; ++j) {
    packed[j] = uint8_t((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
    packed[j + 4] = uint8_t((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
    packed[j + 8] = uint8_t((sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4));
  }
  uint8_t* qs = dst + (T == Q5_K ? 48 : 16);
  std::memset(dst + 16, 0, T == Q5_K ? 160 : 128);  // (qh and) qs
  for (int j = 0; j < 8; ++j) {
    uint8_t v[32];
    k45_values<T>(src, r, j, v);
    for (int l = 0; l < 32; ++l) {
      qs[32 * (j / 2) + l] |= uint8_t((v[l] & 0x0F) << (4 * (j % 2)));
      if constexpr (T == Q5_K) dst[16 + l] |= uint8_t((v[l] >> 4) << j);
    }
  }
}

// A k16 GGML super-block's 256 unsigned values u (layout above) and 16 scale bytes (packed:
// Q6_K's int8, Q3_K's six bits less 32, Q2_K's scale | min << 4).
//   Q6_K: ql[128] | qh[64] | scales[16] | d: value 128h + 32t + l has its low 4 bits in
//         ql[64h + 32(t % 2) + l] (low nibble for t < 2) and its top 2 in bits 2t of qh[32h + l].
//   Q3_K: hmask[32] | qs[64] | scales[12] | d; Q2_K: scales[16] | qs[64] | d | dmin: value
//         128h + 32t + l is bits 2t of qs[32h + l], Q3_K's third bit bit 4h + t of hmask[l].
template <int64_t T>
inline void k16_values(const uint8_t* src, uint8_t u[256], uint8_t sc[16]) {
  for (int h = 0; h < 2; ++h)
    for (int t = 0; t < 4; ++t)
      for (int l = 0; l < 32; ++l) {
        uint8_t& v = u[128 * h + 32 * t + l];
        if constexpr (T == Q6_K) {
          const uint8_t low = src[64 * h + 32 * (t % 2) + l], top = src[128 + 32 * h + l];
          v = uint8_t(((t < 2 ? low : low >> 4) & 0x0F) | (((top >> (2 * t)) & 3) << 4));
        } else {
          v = (src[(T == Q3_K ? 32 : 16) + 32 * h + l] >> (2 * t)) & 3;
          if constexpr (T == Q3_K) v |= uint8_t(((src[l] >> (4 * h + t)) & 1) << 2);
        }
      }
  if constexpr (T == Q3_K) _mm_storeu_si128((__m128i*)sc, scales_k3(src + 96));
  else std::memcpy(sc, src + (T == Q6_K ? 192 : 0), 16);
}

// ... and back: the GGML super-block of u and sc (Q3_K's scales re-encoded in its 12 bytes,
// every bit of which is a bit of a scale: the bytes come back exactly).
template <int64_t T>
inline void k16_block(const uint8_t u[256], const uint8_t sc[16], uint8_t* dst) {
  std::memset(dst, 0, T == Q6_K ? 192 : (T == Q3_K ? 108 : 80));  // all but d (dmin)
  for (int h = 0; h < 2; ++h)
    for (int t = 0; t < 4; ++t)
      for (int l = 0; l < 32; ++l) {
        const uint8_t v = u[128 * h + 32 * t + l];
        if constexpr (T == Q6_K) {
          dst[64 * h + 32 * (t % 2) + l] |= uint8_t((v & 0x0F) << (t < 2 ? 0 : 4));
          dst[128 + 32 * h + l] |= uint8_t((v >> 4) << (2 * t));
        } else {
          dst[(T == Q3_K ? 32 : 16) + 32 * h + l] |= uint8_t((v & 3) << (2 * t));
          if constexpr (T == Q3_K) dst[l] |= uint8_t((v >> 2) << (4 * h + t));
        }
      }
  if constexpr (T == Q3_K)
    for (int g = 0; g < 16; ++g) {
      const int b = uint8_t(sc[g] + 32);  // six bits: low 4 in byte g % 8 (g >= 8: high nibble), top 2 in byte 8 + g % 4
      dst[96 + g % 8] |= uint8_t((b & 0x0F) << (g < 8 ? 0 : 4));
      dst[104 + g % 4] |= uint8_t((b >> 4) << (2 * (g / 4)));
    }
  else
    std::memcpy(dst + (T == Q6_K ? 192 : 0), sc, 16);
}

// Where a k16 type keeps its fp16 scales in a GGML block: d (and Q2_K's dmin after it)
template <int64_t T> constexpr int K16_SRC_D = T == Q6_K ? 208 : (T == Q3_K ? 108 : 80);

template <int64_t T>
inline void pack_k16(const uint8_t* src, int r, uint8_t* dst) {
  std::memcpy(dst + 2 * r, src + K16_SRC_D<T>, 2);
  if constexpr (T == Q2_K) std::memcpy(dst + 16 + 2 * r, src + 82, 2);
  alignas(16) uint8_t u[256];
  uint8_t sc[16];
  k16_values<T>(src, u, sc);
  for (int g = 0; g < 16; ++g) dst[K16_SCALES<T> + 8 * g + r] = sc[g];
  for (int j = 0; j < 8; ++j) {
    const uint8_t* v = u + 32 * j;
    uint8_t* out = dst + K16_SUBBLOCKS<T> + K16_SUB<T> * j;
    if constexpr (T == Q6_K) {
      const __m128i mask = _mm_set1_epi8(0x0F);
      store_chunks(_mm_and_si128(_mm_load_si128((const __m128i*)v), mask), _mm_and_si128(_mm_load_si128((const __m128i*)(v + 16)), mask), r, out);
    }
    for (int i = 0; i < 4; ++i) {
      uint8_t top[2] = {0, 0}, low2[2] = {0, 0}, third = 0;
      for (int c = 0; c < 4; ++c) {
        const uint8_t a = v[8 * c + i], b = v[8 * c + 4 + i];  // chunk c's low and high nibble's values
        top[c / 2] |= uint8_t((((a >> 4) | ((b >> 4) << 2)) & 0x0F) << (4 * (c % 2)));
        low2[0] |= uint8_t((a & 3) << (2 * c));
        low2[1] |= uint8_t((b & 3) << (2 * c));
        third |= uint8_t((((a >> 2) & 1) << c) | (((b >> 2) & 1) << (4 + c)));
      }
      if constexpr (T == Q6_K) {
        out[128 + 4 * r + i] = top[0];
        out[160 + 4 * r + i] = top[1];
      } else {
        out[4 * r + i] = low2[0];
        out[32 + 4 * r + i] = low2[1];
        if constexpr (T == Q3_K) out[64 + 4 * r + i] = third;
      }
    }
  }
}

// Row r's 32 values (u) of packed sub-block j of a k16 super-block.
template <int64_t T>
inline void k16_sub_values(const uint8_t* blk, int r, int j, uint8_t v[32]) {
  const uint8_t* in = blk + K16_SUBBLOCKS<T> + K16_SUB<T> * j;
  if constexpr (T == Q6_K) load_chunks(in, r, v);
  for (int c = 0; c < 4; ++c)
    for (int i = 0; i < 4; ++i) {
      uint8_t& a = v[8 * c + i];
      uint8_t& b = v[8 * c + 4 + i];
      if constexpr (T == Q6_K) {
        const int pair = (in[128 + 32 * (c / 2) + 4 * r + i] >> (4 * (c % 2))) & 0x0F;
        a |= uint8_t((pair & 3) << 4);
        b |= uint8_t((pair >> 2) << 4);
      } else {
        a = (in[4 * r + i] >> (2 * c)) & 3;
        b = (in[32 + 4 * r + i] >> (2 * c)) & 3;
        if constexpr (T == Q3_K) {
          a |= uint8_t(((in[64 + 4 * r + i] >> c) & 1) << 2);
          b |= uint8_t(((in[64 + 4 * r + i] >> (4 + c)) & 1) << 2);
        }
      }
    }
}

template <int64_t T>
inline void unpack_k16(const uint8_t* src, int r, uint8_t* dst) {
  uint8_t u[256], sc[16];
  for (int j = 0; j < 8; ++j) k16_sub_values<T>(src, r, j, u + 32 * j);
  for (int g = 0; g < 16; ++g) sc[g] = src[K16_SCALES<T> + 8 * g + r];
  k16_block<T>(u, sc, dst);
  std::memcpy(dst + K16_SRC_D<T>, src + 2 * r, 2);
  if constexpr (T == Q2_K) std::memcpy(dst + 82, src + 16 + 2 * r, 2);
}

// Q4_K, Q5_K: sub-block j of row r is d1 * q - m1 with d1 = d * scale, m1 = dmin * min, as
// GGML's dequantize_row_q4_K (q5_K) computes them (so the floats are identical).
inline void k45_sub_scales(const uint8_t* blk, int r, int j, float& d1, float& m1) {
  d1 = half(blk + 2 * r) * float(blk[K4_SCALES + 8 * j + r]);
  m1 = half(blk + K4_DMIN + 2 * r) * float(blk[K4_MINS + 8 * j + r]);
}

// Q4_K, Q5_K: chunk c of packed sub-block `sub` as whole values (lo, hi: as Q4_0's) for L's
// rows (Lanes16: the next group's sub-block `stride` bytes on), Q5_K's fifth bits moved from
// their byte (layout above) to bit 4.
template <int64_t T, class L>
inline void k45_chunk(const uint8_t* sub, int64_t stride, int c, typename L::I& lo, typename L::I& hi) {
  const typename L::I raw = L::chunk(sub + 32 * c, stride);
  lo = L::low4(raw);
  hi = L::high4(raw);
  if constexpr (T == Q5_K) {
    const typename L::I top = L::chunk(sub + 128, stride), bit4 = L::bytes(0x10);
    lo = L::bit_or(lo, L::bit_and(L::shl16(top, 4 - c), bit4));
    hi = L::bit_or(hi, L::bit_and(L::shr16(top, c), bit4));
  }
}

template <int64_t T>
inline void dequant_k45_group(const uint8_t* blk, float* out, int64_t k) {
  for (int j = 0; j < 8; ++j) {
    float d1[8], m1[8];
    for (int r = 0; r < 8; ++r) k45_sub_scales(blk, r, j, d1[r], m1[r]);
    for (int c = 0; c < 4; ++c) {
      __m256i lo, hi;
      k45_chunk<T, Lanes8>(blk + K4_CHUNKS + K45_SUB<T> * j, 0, c, lo, hi);
      __m256 rows[8];
      chunk_rows(lo, hi, rows);
      for (int r = 0; r < 8; ++r)
        _mm256_storeu_ps(out + r * k + 32 * j + 8 * c, _mm256_sub_ps(_mm256_mul_ps(_mm256_set1_ps(d1[r]), rows[r]), _mm256_set1_ps(m1[r])));
    }
  }
}

// k16: chunk c of packed sub-block `sub` as whole unsigned values, as Q4's lo and hi (layout
// above), for L's rows (as k45_chunk).
template <int64_t T, class L>
inline void k16_chunk(const uint8_t* sub, int64_t stride, int c, typename L::I& lo, typename L::I& hi) {
  using I = typename L::I;
  if constexpr (T == Q6_K) {  // low 4 bits from the chunk, top 2 from the top-bit register
    const I raw = L::chunk(sub + 32 * c, stride), top = L::chunk(sub + 128 + 32 * (c / 2), stride), bits45 = L::bytes(0x30);
    const I top_lo = c % 2 ? top : L::shl16(top, 4);
    const I top_hi = c % 2 ? L::shr16(top, 2) : L::shl16(top, 2);
    lo = L::bit_or(L::low4(raw), L::bit_and(top_lo, bits45));
    hi = L::bit_or(L::high4(raw), L::bit_and(top_hi, bits45));
  } else {  // 2 bits at 2c of the low and high registers; Q3_K's third at bits c and 4 + c
    const I two = L::bytes(3);
    lo = L::bit_and(L::shr16(L::chunk(sub, stride), 2 * c), two);
    hi = L::bit_and(L::shr16(L::chunk(sub + 32, stride), 2 * c), two);
    if constexpr (T == Q3_K) {
      const I third = L::chunk(sub + 64, stride), bit2 = L::bytes(4);
      const I third_lo = c < 2 ? L::shl16(third, 2 - c) : L::shr16(third, c - 2);
      lo = L::bit_or(lo, L::bit_and(third_lo, bit2));
      hi = L::bit_or(hi, L::bit_and(L::shr16(third, 2 + c), bit2));
    }
  }
}

// k16: row r's values under scale byte `sc` are d1 * (u - offset) - m1, with d1 = d * scale and
// (Q2_K) m1 = dmin * min, as GGML's dequantize_row_q*_K computes them (identical floats).
template <int64_t T>
inline void k16_sub_scales(const uint8_t* blk, int r, int g, float& d1, float& m1) {
  const uint8_t sc = blk[K16_SCALES<T> + 8 * g + r];
  d1 = half(blk + 2 * r) * float(T == Q2_K ? sc & 0x0F : int8_t(sc));
  m1 = T == Q2_K ? half(blk + 16 + 2 * r) * float(sc >> 4) : 0.f;
}

template <int64_t T>
inline void dequant_k16_group(const uint8_t* blk, float* out, int64_t k) {
  const __m256 offset = _mm256_set1_ps(float(K16_OFFSET<T>));
  for (int j = 0; j < 8; ++j)
    for (int c = 0; c < 4; ++c) {
      __m256i lo, hi;
      k16_chunk<T, Lanes8>(blk + K16_SUBBLOCKS<T> + K16_SUB<T> * j, 0, c, lo, hi);
      __m256 rows[8];
      chunk_rows(lo, hi, rows);
      for (int r = 0; r < 8; ++r) {
        float d1, m1;
        k16_sub_scales<T>(blk, r, 2 * j + c / 2, d1, m1);
        __m256 v = _mm256_mul_ps(_mm256_set1_ps(d1), _mm256_sub_ps(rows[r], offset));
        if constexpr (T == Q2_K) v = _mm256_sub_ps(v, _mm256_set1_ps(m1));
        _mm256_storeu_ps(out + r * k + 32 * j + 8 * c, v);
      }
    }
}

// Row r of a packed super-block decoded to float32 at o (a group cut by a run's ends), with the
// floats of the vector decode.
template <int64_t T>
void k16_row_block(const uint8_t* blk, int r, float* o) {
  for (int j = 0; j < 8; ++j) {
    uint8_t v[32];
    k16_sub_values<T>(blk, r, j, v);
    for (int l = 0; l < 32; ++l) {
      float d1, m1;
      k16_sub_scales<T>(blk, r, 2 * j + l / 16, d1, m1);
      const float y = d1 * float(int(v[l]) - K16_OFFSET<T>);
      o[32 * j + l] = T == Q2_K ? y - m1 : y;
    }
  }
}

template <int64_t T>
void k45_row_block(const uint8_t* blk, int r, float* o) {
  for (int j = 0; j < 8; ++j) {
    float d1, m1;
    k45_sub_scales(blk, r, j, d1, m1);
    uint8_t v[32];
    k45_values<T>(blk, r, j, v);
    for (int l = 0; l < 32; ++l) o[32 * j + l] = d1 * float(v[l]) - m1;
  }
}

}  // namespace

// The block functions of packed_layout.h for the k-quants
template <>
void pack_block<Q4_K>(const uint8_t* src, int r, uint8_t* dst) { pack_k45<Q4_K>(src, r, dst); }
template <>
void pack_block<Q5_K>(const uint8_t* src, int r, uint8_t* dst) { pack_k45<Q5_K>(src, r, dst); }
template <>
void pack_block<Q6_K>(const uint8_t* src, int r, uint8_t* dst) { pack_k16<Q6_K>(src, r, dst); }
template <>
void pack_block<Q3_K>(const uint8_t* src, int r, uint8_t* dst) { pack_k16<Q3_K>(src, r, dst); }
template <>
void pack_block<Q2_K>(const uint8_t* src, int r, uint8_t* dst) { pack_k16<Q2_K>(src, r, dst); }
template <>
void unpack_block<Q4_K>(const uint8_t* src, int r, uint8_t* dst) { unpack_k45<Q4_K>(src, r, dst); }
template <>
void unpack_block<Q5_K>(const uint8_t* src, int r, uint8_t* dst) { unpack_k45<Q5_K>(src, r, dst); }
template <>
void unpack_block<Q6_K>(const uint8_t* src, int r, uint8_t* dst) { unpack_k16<Q6_K>(src, r, dst); }
template <>
void unpack_block<Q3_K>(const uint8_t* src, int r, uint8_t* dst) { unpack_k16<Q3_K>(src, r, dst); }
template <>
void unpack_block<Q2_K>(const uint8_t* src, int r, uint8_t* dst) { unpack_k16<Q2_K>(src, r, dst); }
template <>
void dequant_group_block<Q4_K>(const uint8_t* blk, float* out, int64_t k) { dequant_k45_group<Q4_K>(blk, out, k); }
template <>
void dequant_group_block<Q5_K>(const uint8_t* blk, float* out, int64_t k) { dequant_k45_group<Q5_K>(blk, out, k); }
template <>
void dequant_group_block<Q6_K>(const uint8_t* blk, float* out, int64_t k) { dequant_k16_group<Q6_K>(blk, out, k); }
template <>
void dequant_group_block<Q3_K>(const uint8_t* blk, float* out, int64_t k) { dequant_k16_group<Q3_K>(blk, out, k); }
template <>
void dequant_group_block<Q2_K>(const uint8_t* blk, float* out, int64_t k) { dequant_k16_group<Q2_K>(blk, out, k); }
template <>
void dequant_row_block<Q2_K>(const uint8_t* blk, int r, float* o) { k16_row_block<Q2_K>(blk, r, o); }
template <>
void dequant_row_block<Q3_K>(const uint8_t* blk, int r, float* o) { k16_row_block<Q3_K>(blk, r, o); }
template <>
void dequant_row_block<Q4_K>(const uint8_t* blk, int r, float* o) { k45_row_block<Q4_K>(blk, r, o); }
template <>
void dequant_row_block<Q5_K>(const uint8_t* blk, int r, float* o) { k45_row_block<Q5_K>(blk, r, o); }
template <>
void dequant_row_block<Q6_K>(const uint8_t* blk, int r, float* o) { k16_row_block<Q6_K>(blk, r, o); }

namespace {

// Float sums of x's rows per `span` values: the k-quant offsets' and minimums' share.
std::vector<float> span_sums(const float* x, int64_t m, int64_t k, int span) {
  std::vector<float> sums(m * k / span);
  for (size_t i = 0; i < sums.size(); ++i) {
    float t = 0.f;
    for (int v = 0; v < span; ++v) t += x[span * i + v];
    sums[i] = t;
  }
  return sums;
}

// Row r's (lane r's) products with 32 values of x at xb over a sub-block's chunks c0, c0 + 1, ..
// (lo, hi: its whole unsigned values), times the row's scale of those values (sc, int32 lanes):
// exact in int32 (bounds at the tiles). VNNI: the products add up in int32 and meet the scale
// in one multiply; else their int16 pair sums meet it in a multiply-add (Lanes8 only), which
// holds 8 pair sums of 4-bit values (8 * 2 * 15 * 127), half of 5-bit ones and 2 of 6-bit ones.
template <int64_t T, class L, int C0, int CHUNKS>
inline typename L::I scaled_dot(const typename L::I* lo, const typename L::I* hi, const int8_t* xb, typename L::I sc) {
  if constexpr (L::VNNI) {
    typename L::I dot = L::zero();
    for (int c = C0; c < C0 + CHUNKS; ++c) dot = L::dot4_x(L::dot4_x(dot, lo[c], xb + 8 * c), hi[c], xb + 8 * c + 4);
    return L::mul_int(dot, sc);
  } else {
    const __m256i sc16 = _mm256_blend_epi16(sc, _mm256_slli_epi32(sc, 16), 0xAA);  // in both int16 lanes of a row
    __m256i s[4];
    chunk_sums16(lo, hi, xb, s);  // (all four: the compiler drops the ones not read)
    if constexpr (CHUNKS == 2) {
      if constexpr (T == Q6_K) return _mm256_add_epi32(_mm256_madd_epi16(s[C0], sc16), _mm256_madd_epi16(s[C0 + 1], sc16));
      else return _mm256_madd_epi16(_mm256_add_epi16(s[C0], s[C0 + 1]), sc16);
    } else {
      const __m256i half01 = _mm256_add_epi16(s[0], s[1]), half23 = _mm256_add_epi16(s[2], s[3]);
      if constexpr (T == Q5_K) return _mm256_add_epi32(_mm256_madd_epi16(half01, sc16), _mm256_madd_epi16(half23, sc16));
      else return _mm256_madd_epi16(_mm256_add_epi16(half01, half23), sc16);
    }
  }
}

// A super-block's share of a row of y (acc, L's rows), from its integer sums isum[TERMS] (each
// term's sub-blocks' products times their scales) and x's float sums: the steps of GGML's
// k-quant products in float. The vector and tile kernels share them: the same floats.
// Q4_K, Q5_K: d * e * sum - dmin * sum over sub-blocks of min * sum(x) (xsum per 32 values).
template <int TERMS, class L>
inline void k45_floats(const uint8_t* blk, int64_t stride, const typename L::I* isum, const Q8Act& a, const float* xsum, int64_t row,
                       int64_t sb, int64_t k, typename L::F& acc) {
  using F = typename L::F;
  F f = L::to_float(isum[0]);  // in units of the last term's scale
  for (int t = 1; t < TERMS; ++t) f = L::fmadd(f, L::all(float(1 << TERM_SHIFT)), L::to_float(isum[t]));
  const float e = a.d[(row * TERMS + TERMS - 1) * (k / 256) + sb];
  const float* xs = xsum + row * (k / 32) + 8 * sb;
  F mins = L::all(0.f);
  for (int j = 0; j < 8; ++j) mins = L::fmadd(L::to_float(L::bytes_u32(blk + K4_MINS + 8 * j, stride)), L::all(xs[j]), mins);
  acc = L::fnmadd(L::halves(blk + K4_DMIN, stride), mins, L::fmadd(L::mul(L::halves(blk, stride), L::all(e)), f, acc));
}

// k16: row r's scale of 16 values g in lane r, as int32
template <int64_t T, class L>
inline typename L::I k16_scales(const uint8_t* blk, int64_t stride, int g) {
  if constexpr (T == Q2_K) return L::bit_and(L::bytes_u32(blk + K16_SCALES<T> + 8 * g, stride), L::all_int(0x0F));
  else return L::bytes_i32(blk + K16_SCALES<T> + 8 * g, stride);
}

// k16: d * (e * sum - offset * sum over the 16 scales of scale * sum(x)); Q2_K: d * e * sum -
// dmin * sum over its minimums of min * sum(x) (xsum16 per 16 values).
template <int64_t T, int TERMS, class L>
inline void k16_floats(const uint8_t* blk, int64_t stride, const typename L::I* isum, const Q8Act& a, const float* xsum16, int64_t row,
                       int64_t sb, int64_t k, typename L::F& acc) {
  using F = typename L::F;
  F f = L::to_float(isum[0]);  // in units of the last term's scale
  for (int t = 1; t < TERMS; ++t) f = L::fmadd(f, L::all(float(1 << TERM_SHIFT)), L::to_float(isum[t]));
  const float* xs = xsum16 + row * (k / 16) + 16 * sb;
  const float e = a.d[(row * TERMS + TERMS - 1) * (k / 256) + sb];
  F shift = L::all(0.f);
  for (int g = 0; g < 16; ++g) {
    const uint8_t* bytes = blk + K16_SCALES<T> + 8 * g;
    const typename L::I by = T == Q2_K ? L::shift_right(L::bytes_u32(bytes, stride), 4) : L::bytes_i32(bytes, stride);
    shift = L::fmadd(L::to_float(by), L::all(xs[g]), shift);
  }
  const F dw = L::halves(blk, stride);
  if constexpr (T == Q2_K)
    acc = L::fnmadd(L::halves(blk + 16, stride), shift, L::fmadd(L::mul(dw, L::all(e)), f, acc));
  else
    acc = L::fmadd(dw, L::fmadd(L::all(e), f, L::mul(L::all(-float(K16_OFFSET<T>)), shift)), acc);
}

// Q4_K, Q5_K: y[m, 8g ..] for TM rows of x against L::ROWS / 8 weight groups from g (gw; the
// next one `stride` bytes on), row m of the tile at out + m * out_stride; x carried by TERMS
// int8 terms with one scale per 256 values (quantize_act's block 256: one per super-block, as
// GGML's Q8_K). Each sub-block's 32 products of a row meet its 6-bit scale in integers
// (scaled_dot); the 8 sub-blocks add in int32 (<= 8 * 63 * 32 * 31 * 127 < 2^31), the terms
// in float (1 + 2^-24 of their sum), and the minimums' share, -dmin * min * sum(x), takes x's
// float sums per 32 values (xsum [m, k / 32]), as the k-quant kernel does. Per lane the
// operations are the same at either width: the same floats.
template <int64_t T, int TM, int TERMS, class L>
inline void k45_group_tile(const uint8_t* gw, int64_t stride, int64_t nsb, const Q8Act& a, const float* xsum, int64_t m0, int64_t k,
                           float* out, int64_t out_stride) {
  using I = typename L::I;
  using F = typename L::F;
  const int64_t gb = packed_block_bytes(T);
  F acc[TM];
  for (int m = 0; m < TM; ++m) acc[m] = L::all(0.f);
  const int8_t* xq = a.q.data() + m0 * TERMS * k;  // row m's term t at xq + (m * TERMS + t) * k
  for (int64_t sb = 0; sb < nsb; ++sb) {
    const uint8_t* blk = gw + sb * gb;
    L::prefetch(blk, gb, stride);
    I isum[TM][TERMS];
    for (int m = 0; m < TM; ++m)
      for (int t = 0; t < TERMS; ++t) isum[m][t] = L::zero();
    for (int j = 0; j < 8; ++j) {
      const I sc = L::bytes_u32(blk + K4_SCALES + 8 * j, stride);
      I lo[4], hi[4];
      for (int c = 0; c < 4; ++c) k45_chunk<T, L>(blk + K4_CHUNKS + K45_SUB<T> * j, stride, c, lo[c], hi[c]);
      for (int m = 0; m < TM; ++m)
        for (int t = 0; t < TERMS; ++t)
          isum[m][t] = L::add(isum[m][t], scaled_dot<T, L, 0, 4>(lo, hi, xq + (m * TERMS + t) * k + 256 * sb + 32 * j, sc));
    }
    for (int m = 0; m < TM; ++m) k45_floats<TERMS, L>(blk, stride, isum[m], a, xsum, m0 + m, sb, k, acc[m]);
  }
  for (int m = 0; m < TM; ++m) L::store(out + out_stride * m, acc[m]);
}

// k16 (Q2_K, Q3_K, Q6_K): as Q4_K, with two scales a sub-block, one per 16 values (chunks 0-1
// and 2-3; 8 sub-blocks of Q6_K: <= 8 * 2 * 128 * 16 * 63 * 128 < 2^31). The values are u = q +
// offset: the offset comes back as -offset * d * sum(scale * x), Q2_K's minimums as
// -dmin * sum(min * x), on x's float sums per 16 values (xsum16 [m, k / 16]).
template <int64_t T, int TM, int TERMS, class L>
inline void k16_group_tile(const uint8_t* gw, int64_t stride, int64_t nsb, const Q8Act& a, const float* xsum16, int64_t m0, int64_t k,
                           float* out, int64_t out_stride) {
  using I = typename L::I;
  using F = typename L::F;
  const int64_t gb = packed_block_bytes(T);
  F acc[TM];
  for (int m = 0; m < TM; ++m) acc[m] = L::all(0.f);
  const int8_t* xq = a.q.data() + m0 * TERMS * k;  // row m's term t at xq + (m * TERMS + t) * k
  for (int64_t sb = 0; sb < nsb; ++sb) {
    const uint8_t* blk = gw + sb * gb;
    L::prefetch(blk, gb, stride);
    I isum[TM][TERMS];
    for (int m = 0; m < TM; ++m)
      for (int t = 0; t < TERMS; ++t) isum[m][t] = L::zero();
    for (int j = 0; j < 8; ++j) {
      I lo[4], hi[4];
      for (int c = 0; c < 4; ++c) k16_chunk<T, L>(blk + K16_SUBBLOCKS<T> + K16_SUB<T> * j, stride, c, lo[c], hi[c]);
      const I sc0 = k16_scales<T, L>(blk, stride, 2 * j), sc1 = k16_scales<T, L>(blk, stride, 2 * j + 1);
      for (int m = 0; m < TM; ++m)
        for (int t = 0; t < TERMS; ++t) {
          const int8_t* xb = xq + (m * TERMS + t) * k + 256 * sb + 32 * j;
          isum[m][t] = L::add(isum[m][t], L::add(scaled_dot<T, L, 0, 2>(lo, hi, xb, sc0), scaled_dot<T, L, 2, 2>(lo, hi, xb, sc1)));
        }
    }
    for (int m = 0; m < TM; ++m) k16_floats<T, TERMS, L>(blk, stride, isum[m], a, xsum16, m0 + m, sb, k, acc[m]);
  }
  for (int m = 0; m < TM; ++m) L::store(out + out_stride * m, acc[m]);
}

constexpr int KQ_TM = 2;  // x rows per pass (k-quants): three terms of two rows keep their sums in registers

template <int64_t T, class L, int TERMS>
inline void kquant_tile(int64_t tm, const uint8_t* gw, int64_t stride, int64_t nsb, const Q8Act& a, const float* sums, int64_t m0, int64_t k,
                        float* out, int64_t out_stride) {
  if constexpr (T == Q4_K || T == Q5_K)
    (tm == 2 ? k45_group_tile<T, 2, TERMS, L> : k45_group_tile<T, 1, TERMS, L>)(gw, stride, nsb, a, sums, m0, k, out, out_stride);
  else
    (tm == 2 ? k16_group_tile<T, 2, TERMS, L> : k16_group_tile<T, 1, TERMS, L>)(gw, stride, nsb, a, sums, m0, k, out, out_stride);
}

template <int64_t T, class L>
inline void kquant_tile(int64_t terms, int64_t tm, const uint8_t* gw, int64_t stride, int64_t nsb, const Q8Act& a, const float* sums,
                        int64_t m0, int64_t k, float* out, int64_t out_stride) {
  switch (terms) {
    case 1: return kquant_tile<T, L, 1>(tm, gw, stride, nsb, a, sums, m0, k, out, out_stride);
    case 2: return kquant_tile<T, L, 2>(tm, gw, stride, nsb, a, sums, m0, k, out, out_stride);
    default: return kquant_tile<T, L, 3>(tm, gw, stride, nsb, a, sums, m0, k, out, out_stride);
  }
}

#ifdef __AMX_INT8__
// The k-quants on AMX tiles (amx_tiles.h), for many rows of x. A group pair's sub-block goes to
// the tiles as its whole unsigned values (below 64: the same as signed bytes); its products
// come back per scale (the k16 types: each 16 values apart, the tiles configured for 16) and
// meet the scale in int32 (isum: each row of terms' sum over the super-block so far), then
// the super-block's floats as the vector kernels': the same integers, the same floats.
// y[m0 .., 8g .. 8g+15] for xr rows of x against groups g, g+1 (gw; the next `stride` on) into
// out [xr][16]; xa: the rows' terms 32 values at a time (amx::gemm_on_tiles).
template <int64_t T, int TERMS>
void kquant_pair_on_tiles(const uint8_t* gw, int64_t stride, int64_t nsb, const int8_t* xa, const Q8Act& a, const float* sums, int64_t m0,
                          int64_t xr, int64_t k, float* out) {
  using L = Lanes16;
  constexpr bool K16 = !(T == Q4_K || T == Q5_K);
  constexpr int PARTS = K16 ? 2 : 1;  // products a sub-block: one per scale
  const int64_t gb = packed_block_bytes(T), tr = xr * TERMS, nb = 8 * nsb;
  const bool two = tr > 16;
  alignas(64) uint8_t bv[2][512];
  alignas(64) int32_t c[2][PARTS][amx::TERM_ROWS * 16];
  alignas(64) int32_t isum[amx::TERM_ROWS * 16];
  __m512 acc[amx::TERM_ROWS / TERMS];
  for (int64_t i = 0; i < xr; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb + 2; ++b) {  // sub-block b: unpacked, then multiplied, then added up
    if (b < nb) {
      const uint8_t* blk = gw + (b / 8) * gb;
      const int j = int(b % 8);
      if (j == 0) L::prefetch(blk, gb, stride);
      __m512i lo[4], hi[4];
      for (int q = 0; q < 4; ++q) {
        if constexpr (K16) k16_chunk<T, L>(blk + K16_SUBBLOCKS<T> + K16_SUB<T> * j, stride, q, lo[q], hi[q]);
        else k45_chunk<T, L>(blk + K4_CHUNKS + K45_SUB<T> * j, stride, q, lo[q], hi[q]);
      }
      amx::store_block(lo, hi, bv[b & 1]);
    }
    if (b >= 1 && b <= nb)  // part p: B's rows 4p .. (values 16p ..), each term's 16 values from 16p
      for (int p = 0; p < PARTS; ++p) amx::block_products(bv[(b - 1) & 1] + 256 * p, xa + (b - 1) * tr * 32 + 16 * p, two, c[(b - 1) & 1][p]);
    if (b >= 2) {
      const int64_t sb = (b - 2) / 8;
      const int j = int((b - 2) % 8);
      const uint8_t* blk = gw + sb * gb;
      __m512i sc[PARTS];
      if constexpr (K16) sc[0] = k16_scales<T, L>(blk, stride, 2 * j), sc[1] = k16_scales<T, L>(blk, stride, 2 * j + 1);
      else sc[0] = L::bytes_u32(blk + K4_SCALES + 8 * j, stride);
      const auto& cj = c[b & 1];  // (b - 2) & 1
      for (int64_t r = 0; r < tr; ++r) {
        __m512i sum = j == 0 ? L::zero() : _mm512_load_si512(isum + 16 * r);
        for (int p = 0; p < PARTS; ++p) sum = L::add(sum, L::mul_int(_mm512_load_si512(cj[p] + 16 * r), sc[p]));
        _mm512_store_si512(isum + 16 * r, sum);
      }
      if (j == 7)
        for (int64_t i = 0; i < xr; ++i) {
          __m512i rows[TERMS];
          for (int t = 0; t < TERMS; ++t) rows[t] = _mm512_load_si512(isum + 16 * (i * TERMS + t));
          if constexpr (K16) k16_floats<T, TERMS, L>(blk, stride, rows, a, sums, m0 + i, sb, k, acc[i]);
          else k45_floats<TERMS, L>(blk, stride, rows, a, sums, m0 + i, sb, k, acc[i]);
        }
    }
  }
  for (int64_t i = 0; i < xr; ++i) _mm512_storeu_ps(out + 16 * i, acc[i]);
}

// Q4_K: its 4-bit values times a 6-bit scale don't fit a byte, but times 3 bits
// of it do (15 * 7 = 105). B holds the values times the scale's low 3 bits (tile 2) and high 3
// (tile 5), so the tiles add up a whole super-block's products with their scales (C = 8 * C_hi
// + C_lo, |C| <= 256 * 105 * 127 a tile), stored once a super-block instead of once a
// sub-block, and no multiply by the scales in vectors: the same integers as scaled_dot's sums.
// The byte products come from a table of s * w (s < 8, w < 16) at 16 s + w, one lookup
// (vpermi2b) a register. Otherwise as kquant_pair_on_tiles.
template <int TERMS>
void q4k_pair_folded(const uint8_t* gw, int64_t stride, int64_t nsb, const int8_t* xa, const Q8Act& a, const float* sums, int64_t m0,
                     int64_t xr, int64_t k, float* out) {
  using L = Lanes16;
  static constexpr auto FOLD = [] {
    std::array<uint8_t, 128> t{};
    for (int i = 0; i < 128; ++i) t[i] = uint8_t((i >> 4) * (i & 15));
    return t;
  }();
  const __m512i fold0 = _mm512_loadu_si512(FOLD.data()), fold1 = _mm512_loadu_si512(FOLD.data() + 64);
  const __m512i seven = _mm512_set1_epi32(7), every_byte = _mm512_set1_epi32(0x10101010);
  const int64_t gb = packed_block_bytes(Q4_K), tr = xr * TERMS;
  const bool two = tr > 16;
  alignas(64) uint8_t bv[2][1024];  // two sub-blocks' B in turn: the values times the scales' low bits, then high
  alignas(64) int32_t c[2][amx::TERM_ROWS * 16];  // C_lo, C_hi
  __m512 acc[amx::TERM_ROWS / TERMS];
  for (int64_t i = 0; i < xr; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t sb = 0; sb < nsb; ++sb) {
    const uint8_t* blk = gw + sb * gb;
    L::prefetch(blk, gb, stride);
    _tile_zero(3);
    _tile_zero(6);
    _tile_zero(4);
    _tile_zero(7);
    for (int j = 0; j < 9; ++j) {  // sub-block j's B built while j - 1's go to the tiles
      uint8_t* bj = bv[j & 1];
      if (j < 8) {
        // row r's 3 scale bits s as 16 s in each of its 4 bytes: the table's row for them
        const __m512i sc = L::bytes_u32(blk + K4_SCALES + 8 * j, stride);
        const __m512i rows_lo = _mm512_mullo_epi32(_mm512_and_si512(sc, seven), every_byte);
        const __m512i rows_hi = _mm512_mullo_epi32(_mm512_srli_epi32(sc, 3), every_byte);
        __m512i lo[4], hi[4];
        for (int q = 0; q < 4; ++q) k45_chunk<Q4_K, L>(blk + K4_CHUNKS + K45_SUB<Q4_K> * j, stride, q, lo[q], hi[q]);
        for (int q = 0; q < 4; ++q) {
          _mm512_store_si512(bj + 128 * q, _mm512_permutex2var_epi8(fold0, _mm512_or_si512(lo[q], rows_lo), fold1));
          _mm512_store_si512(bj + 128 * q + 64, _mm512_permutex2var_epi8(fold0, _mm512_or_si512(hi[q], rows_lo), fold1));
          _mm512_store_si512(bj + 512 + 128 * q, _mm512_permutex2var_epi8(fold0, _mm512_or_si512(lo[q], rows_hi), fold1));
          _mm512_store_si512(bj + 512 + 128 * q + 64, _mm512_permutex2var_epi8(fold0, _mm512_or_si512(hi[q], rows_hi), fold1));
        }
      }
      if (j >= 1) {
        const uint8_t* bp = bv[(j - 1) & 1];
        const int8_t* xj = xa + (8 * sb + j - 1) * tr * 32;
        _tile_loadd(2, bp, 64);
        _tile_loadd(5, bp + 512, 64);
        _tile_loadd(0, xj, 32);
        _tile_dpbssd(3, 0, 2);
        _tile_dpbssd(6, 0, 5);
        if (two) {
          _tile_loadd(1, xj + 16 * 32, 32);
          _tile_dpbssd(4, 1, 2);
          _tile_dpbssd(7, 1, 5);
        }
      }
    }
    _tile_stored(3, c[0], 64);
    _tile_stored(6, c[1], 64);
    if (two) {
      _tile_stored(4, c[0] + 16 * 16, 64);
      _tile_stored(7, c[1] + 16 * 16, 64);
    }
    for (int64_t i = 0; i < xr; ++i) {
      __m512i rows[TERMS];
      for (int t = 0; t < TERMS; ++t) {
        const int64_t r = 16 * (i * TERMS + t);
        rows[t] = L::add(L::shift_left(_mm512_load_si512(c[1] + r), 3), _mm512_load_si512(c[0] + r));
      }
      k45_floats<TERMS, L>(blk, stride, rows, a, sums, m0 + i, sb, k, acc[i]);
    }
  }
  for (int64_t i = 0; i < xr; ++i) _mm512_storeu_ps(out + 16 * i, acc[i]);
}

template <int64_t T, int TERMS>
void kquant_gemm_on_tiles(const Q8Act& a, const float* sums, const uint8_t* w, int64_t m, int64_t k, int64_t n, float* y) {
  const int64_t nsb = k / 256, stride = nsb * packed_block_bytes(T);
  amx::gemm_on_tiles<TERMS, T == Q4_K || T == Q5_K ? 32 : 16, T == Q4_K>(
      a, m, k, n, stride, w, y,
      [&](const uint8_t* gw, int64_t m0, int64_t xr, const int8_t* xa, float* out) {
        if constexpr (T == Q4_K) q4k_pair_folded<TERMS>(gw, stride, nsb, xa, a, sums, m0, xr, k, out);
        else kquant_pair_on_tiles<T, TERMS>(gw, stride, nsb, xa, a, sums, m0, xr, k, out);
      },
      [&](const uint8_t* gw, int64_t m0, int64_t xr, float* out) {
        for (int64_t r = 0; r < xr; r += KQ_TM)
          kquant_tile<T, Lanes8>(TERMS, std::min<int64_t>(KQ_TM, xr - r), gw, stride, nsb, a, sums, m0 + r, k, out + 16 * r, 16);
      });
}
#endif

// y [m, n] for a packed k-quant weight: x rounded by quantize_act(x, m, k, terms, 256), with its
// float sums per 32 values (Q4_K's and Q5_K's minimums) or 16 (the k16 types' scales); on AMX
// tiles where they pay, else WideLanes' rows at a time (an odd last group: Lanes8), as the
// 32-value types.
template <int64_t T>
void packed_gemm_kquant(const float* x, const uint8_t* w, int64_t m, int64_t terms, int64_t k, int64_t n, float* y) {
  constexpr int WIDE = WideLanes::ROWS / 8;
  const int64_t nsb = k / 256, stride = nsb * packed_block_bytes(T), groups = groups_of(n);
  const Q8Act a = quantize_act(x, m, k, terms, 256);
  const std::vector<float> sums = span_sums(x, m, k, T == Q4_K || T == Q5_K ? 32 : 16);
#ifdef __AMX_INT8__
  if (amx::pays(m, terms)) {
    switch (terms) {
      case 1: return kquant_gemm_on_tiles<T, 1>(a, sums.data(), w, m, k, n, y);
      case 2: return kquant_gemm_on_tiles<T, 2>(a, sums.data(), w, m, k, n, y);
      default: return kquant_gemm_on_tiles<T, 3>(a, sums.data(), w, m, k, n, y);
    }
  }
#endif
  for_group_tiles<KQ_TM, WIDE>(m, n, stride, terms, y, [&](int64_t g, int64_t m0, int64_t tm, float* out) {
    const uint8_t* gw = w + g * stride;
    if (g + WIDE > groups)  // the last group alone, into the tile's first 8 columns of each row
      return kquant_tile<T, Lanes8>(terms, tm, gw, stride, nsb, a, sums.data(), m0, k, out, WideLanes::ROWS);
    kquant_tile<T, WideLanes>(terms, tm, gw, stride, nsb, a, sums.data(), m0, k, out, WideLanes::ROWS);
  });
}

}  // namespace

#define LLAMAHERD_KQUANTS(DO) \
  case Q2_K: DO(Q2_K); break;  \
  case Q3_K: DO(Q3_K); break;  \
  case Q4_K: DO(Q4_K); break;  \
  case Q5_K: DO(Q5_K); break;  \
  case Q6_K: DO(Q6_K); break;  \
  default: TORCH_CHECK(false, "GGML type ", type, " is not a packed k-quant")

void kquant_pack(int64_t type, const std::vector<const uint8_t*>& rows, int64_t k, uint8_t* out) {
#define DO(T) pack_rows<T>(rows, k, out)
  switch (type) { LLAMAHERD_KQUANTS(DO); }
#undef DO
}

void kquant_unpack(int64_t type, const uint8_t* packed, int64_t n, int64_t k, uint8_t* out) {
#define DO(T) unpack_rows<T>(packed, n, k, out)
  switch (type) { LLAMAHERD_KQUANTS(DO); }
#undef DO
}

void kquant_dequant(int64_t type, const uint8_t* packed, int64_t k, int64_t r0, int64_t r1, float* out) {
#define DO(T) dequant_packed_rows<T>(packed, k, r0, r1, out)
  switch (type) { LLAMAHERD_KQUANTS(DO); }
#undef DO
}

void kquant_gemm(int64_t type, const float* x, const uint8_t* w, int64_t m, int64_t terms, int64_t k, int64_t n, float* y) {
#define DO(T) packed_gemm_kquant<T>(x, w, m, terms, k, n, y)
  switch (type) { LLAMAHERD_KQUANTS(DO); }
#undef DO
}

}  // namespace llamaherd::packed
