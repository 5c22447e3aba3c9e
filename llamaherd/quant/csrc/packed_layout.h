// The packed 8-row layout's shared parts: what it is, block sizes, the chunk format and its
// helpers, and the loops over groups of 8 rows that each type's block functions fill in.
// packed_kernels.cpp holds the 32-value types (Q4_0 .. Q8_0, IQ4_NL) and the entry points,
// packed_kquant_kernels.cpp the k-quants (Q2_K .. Q6_K).
#pragma once

#include "common.h"

namespace llamaherd::packed {

// The loader repacks these weights once (pack()): rows are taken 8 at a time and, for each
// 32-value block, the 8 rows' fp16 scales sit side by side followed by their values
// interleaved 4 at a time, so one 32-byte register holds 4 values of each of the 8 rows.
// One integer multiply-add of such a register with 4 activation values broadcast to all
// lanes then gives partial dot products of all 8 rows at once, lane r for row r: no
// horizontal sums, and each activation block is loaded once per 8 weight rows. This is the
// layout idea of llama.cpp's "repack" CPU buffers (block_q4_0x8), written for our kernels.
// The packed bytes are as many as the file's (rows padded to a multiple of 8 with zeros).
//
// A chunk (32 bytes) holds 4 values of each of the 8 rows, bytes 4r..4r+3 for row r; a 4-bit
// chunk c holds row r's values 8c+i (low nibbles) and 8c+4+i (high nibbles), so a block of 32
// values is 4 chunks. The types' own parts are described in their files.

inline int64_t packed_block_bytes(int64_t type) {
  switch (type) {
    case Q4_0: return 144;
    case Q4_1: return 160;
    case Q5_0: return 176;
    case Q5_1: return 192;
    case IQ4_NL: return 144;
    case Q8_0: return 272;
    case Q4_K: return 1184;
    case Q5_K: return 1440;
    case Q6_K: return 1680;
    case Q3_K: return 912;
    case Q2_K: return 672;
  }
  TORCH_CHECK(false, "GGML type ", type, " has no packed layout");
}

// The k-quants (Q2_K .. Q6_K) pack a 256-value super-block at a time (packed_kquant_kernels.cpp).
inline bool is_kquant(int64_t type) { return type >= Q2_K && type <= Q6_K; }

// Values a packed block holds of each row: a super-block for the k-quants, else 32.
inline int64_t packed_block_values(int64_t type) { return is_kquant(type) ? 256 : 32; }

inline int64_t groups_of(int64_t n) { return (n + 7) / 8; }

// Ask for the weight bytes PREFETCH_BYTES past a block of `bytes` about to be read.
inline void prefetch_ahead(const uint8_t* blk, int64_t bytes) {
  for (int64_t off = 0; off < bytes; off += 64) prefetch_l2(blk + PREFETCH_BYTES + off);
}

// A row's 32 values (0 .. 15, a byte each: lo values 0-15, hi 16-31) into the 4 chunks at
// `out`, as row r of the 8: chunk c takes values 8c..8c+3 (low nibble) and 8c+4..8c+7 (high
// nibble), which two byte shuffles and an OR make of all four.
inline void store_chunks(__m128i lo, __m128i hi, int r, uint8_t* out) {
  const __m128i firsts = _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m128i seconds = _mm_setr_epi8(4, 5, 6, 7, 12, 13, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m128i c01 = _mm_or_si128(_mm_shuffle_epi8(lo, firsts), _mm_slli_epi16(_mm_shuffle_epi8(lo, seconds), 4));
  const __m128i c23 = _mm_or_si128(_mm_shuffle_epi8(hi, firsts), _mm_slli_epi16(_mm_shuffle_epi8(hi, seconds), 4));
  const uint64_t a = uint64_t(_mm_cvtsi128_si64(c01)), b = uint64_t(_mm_cvtsi128_si64(c23));
  std::memcpy(out + 4 * r, &a, 4);
  std::memcpy(out + 32 + 4 * r, (const uint8_t*)&a + 4, 4);
  std::memcpy(out + 64 + 4 * r, &b, 4);
  std::memcpy(out + 96 + 4 * r, (const uint8_t*)&b + 4, 4);
}

// Row r's 32 values (0 .. 15) back out of the 4 chunks at `in`.
inline void load_chunks(const uint8_t* in, int r, uint8_t v[32]) {
  for (int c = 0; c < 4; ++c)
    for (int i = 0; i < 4; ++i) {
      const uint8_t byte = in[32 * c + 4 * r + i];
      v[8 * c + i] = byte & 0x0F;
      v[8 * c + 4 + i] = byte >> 4;
    }
}

// Each row's 8 values of a register pair (a, b) of chunk bytes, as floats: a holds 4 values
// of every row (dword r: row r), b the next 4; interleaving their dwords lines each row's 8
// values up in 64 bits.
inline void chunk_rows(__m256i a, __m256i b, __m256 rows[8]) {
  const __m256i lo = _mm256_unpacklo_epi32(a, b), hi = _mm256_unpackhi_epi32(a, b);
  const __m128i pairs[4] = {_mm256_castsi256_si128(lo), _mm256_castsi256_si128(hi),
                            _mm256_extracti128_si256(lo, 1), _mm256_extracti128_si256(hi, 1)};  // rows 01 23 45 67
  for (int r = 0; r < 8; ++r)
    rows[r] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(r % 2 ? _mm_unpackhi_epi64(pairs[r / 2], pairs[r / 2]) : pairs[r / 2]));
}

inline __m256i bcast4(const int8_t* p) {  // 4 int8 values repeated in all 8 lanes
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// acc + the dot products of each 4-byte group of u (unsigned) with s's (signed), in int32 lanes:
// one AVX-VNNI instruction where the build has it (kernels.py), else pair sums in int16
// (saturating: callers keep |u * s| pair sums below 2^15) widened by a multiply-add with ones.
inline __m256i dot4_add(__m256i acc, __m256i u, __m256i s) {
#ifdef __AVXVNNI__
  return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

// The packed products' vector widths: Lanes8 holds one group's 8 rows (AVX2, a 32-byte chunk a
// register); Lanes16 two groups' 16 rows (AVX-512, chunk c of groups g and g+1 side by side),
// which halves the instructions per weight byte where the integer work bounds the speed (x
// carried by three terms, or many rows of x). A tile written once over L runs at either width;
// per lane the operations are the same, so both give the same floats. `stride` is the bytes
// from group g's block to group g+1's (unused by Lanes8).
struct Lanes8 {
  using I = __m256i;
  using F = __m256;
  using Sign = __m256i;  // a weight's signs, to move onto x (with_sign)
  static constexpr int ROWS = 8;
#ifdef __AVXVNNI__
  static constexpr bool VNNI = true;
#else
  static constexpr bool VNNI = false;
#endif
  static I chunk(const uint8_t* p, int64_t) { return _mm256_loadu_si256((const __m256i*)p); }
  static F halves(const uint8_t* p, int64_t) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
  static void prefetch(const uint8_t* blk, int64_t bytes, int64_t) { prefetch_ahead(blk, bytes); }
  static I bytes(char v) { return _mm256_set1_epi8(v); }
  static I low4(I raw) { return _mm256_and_si256(raw, bytes(0x0F)); }
  static I high4(I raw) { return _mm256_and_si256(_mm256_srli_epi16(raw, 4), bytes(0x0F)); }
  static I x4(const int8_t* p) { return bcast4(p); }
  static I zero() { return _mm256_setzero_si256(); }
  static I dot4(I acc, I u, I s) { return dot4_add(acc, u, s); }
  static I dot4_x(I acc, I u, const int8_t* x) { return dot4(acc, u, x4(x)); }  // with 4 values of x at `x`
  static I all_int(int32_t v) { return _mm256_set1_epi32(v); }
  static I magnitude(I w) { return _mm256_sign_epi8(w, w); }
  static Sign sign_of(I w) { return w; }
  static I with_sign(I x, Sign w) { return _mm256_sign_epi8(x, w); }  // where w is 0, |w| is too: any x
  static I add(I a, I b) { return _mm256_add_epi32(a, b); }
  static I mul_int(I a, I b) { return _mm256_mullo_epi32(a, b); }
  static I shift_left(I a, int bits) { return _mm256_slli_epi32(a, bits); }
  static I shift_right(I a, int bits) { return _mm256_srli_epi32(a, bits); }
  static I shl16(I a, int bits) { return _mm256_slli_epi16(a, bits); }
  static I shr16(I a, int bits) { return _mm256_srli_epi16(a, bits); }
  static I bit_and(I a, I b) { return _mm256_and_si256(a, b); }
  static I bit_or(I a, I b) { return _mm256_or_si256(a, b); }
  // a byte of each row (8 in a row, as the k-quants keep their sub-block scales) as int32 lanes
  static I bytes_u32(const uint8_t* p, int64_t) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p)); }
  static I bytes_i32(const uint8_t* p, int64_t) { return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)); }
  static F to_float(I a) { return _mm256_cvtepi32_ps(a); }
  static F all(float v) { return _mm256_set1_ps(v); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F fnmadd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
};

#ifdef __AVX512VNNI__
struct Lanes16 {
  using I = __m512i;
  using F = __m512;
  using Sign = __mmask64;
  static constexpr int ROWS = 16;
  static constexpr bool VNNI = true;
  static I chunk(const uint8_t* p, int64_t stride) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)p)), _mm256_loadu_si256((const __m256i*)(p + stride)), 1);
  }
  static F halves(const uint8_t* p, int64_t stride) {
    return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i*)p)), _mm_loadu_si128((const __m128i*)(p + stride)), 1));
  }
  static void prefetch(const uint8_t* blk, int64_t bytes, int64_t stride) { prefetch_ahead(blk, bytes), prefetch_ahead(blk + stride, bytes); }
  static I bytes(char v) { return _mm512_set1_epi8(v); }
  static I low4(I raw) { return _mm512_and_si512(raw, bytes(0x0F)); }
  static I high4(I raw) { return _mm512_and_si512(_mm512_srli_epi16(raw, 4), bytes(0x0F)); }
  static I x4(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
  }
  static I zero() { return _mm512_setzero_si512(); }
  static I dot4(I acc, I u, I s) { return _mm512_dpbusd_epi32(acc, u, s); }
  // x broadcast by the multiply-add's own load ({1to16}): GCC does not fold _mm512_set1_epi32
  // into it, and a separate broadcast is one more instruction per product
  static I dot4_x(I acc, I u, const int8_t* x) {
    asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(u), "m"(*(const int32_t*)x));
    return acc;
  }
  static I all_int(int32_t v) { return _mm512_set1_epi32(v); }
  static I magnitude(I w) { return _mm512_abs_epi8(w); }
  static Sign sign_of(I w) { return _mm512_movepi8_mask(w); }
  static I with_sign(I x, Sign negative) { return _mm512_mask_sub_epi8(x, negative, zero(), x); }  // |x| <= 127: no overflow
  static I add(I a, I b) { return _mm512_add_epi32(a, b); }
  static I mul_int(I a, I b) { return _mm512_mullo_epi32(a, b); }
  static I shift_left(I a, int bits) { return _mm512_slli_epi32(a, bits); }
  static I shift_right(I a, int bits) { return _mm512_srli_epi32(a, bits); }
  static I shl16(I a, int bits) { return _mm512_slli_epi16(a, bits); }
  static I shr16(I a, int bits) { return _mm512_srli_epi16(a, bits); }
  static I bit_and(I a, I b) { return _mm512_and_si512(a, b); }
  static I bit_or(I a, I b) { return _mm512_or_si512(a, b); }
  static __m128i bytes8x2(const uint8_t* p, int64_t stride) {
    return _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i*)p), _mm_loadl_epi64((const __m128i*)(p + stride)));
  }
  static I bytes_u32(const uint8_t* p, int64_t stride) { return _mm512_cvtepu8_epi32(bytes8x2(p, stride)); }
  static I bytes_i32(const uint8_t* p, int64_t stride) { return _mm512_cvtepi8_epi32(bytes8x2(p, stride)); }
  static F to_float(I a) { return _mm512_cvtepi32_ps(a); }
  static F all(float v) { return _mm512_set1_ps(v); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F fnmadd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
};
using WideLanes = Lanes16;  // the packed products' width on this build
#else
using WideLanes = Lanes8;
#endif

// Each chunk's int16 pair sums of unsigned values (lo, hi: as nibble_dot) with 32 int8 values
// at xb: s[c] holds, in row r's two lanes, its products with values 8c .. 8c+7. Summed as a
// tree, not a chain: 25% faster (measured, 15 -> 12 cycles a row-block).
inline void chunk_sums16(const __m256i* lo, const __m256i* hi, const int8_t* xb, __m256i s[4]) {
  for (int c = 0; c < 4; ++c)
    s[c] = _mm256_add_epi16(_mm256_maddubs_epi16(lo[c], bcast4(xb + 8 * c)), _mm256_maddubs_epi16(hi[c], bcast4(xb + 8 * c + 4)));
}

// y [m, n] by tiles over a packed weight: tile(g, m0, tm, out) fills out [tm][8 * GROUPS] with
// rows m0 .. m0+tm of y against weight groups g .. g+GROUPS-1 (rows 8g ..; the last tile may
// have fewer groups: its extra columns are not read); threads split the groups, so they write
// apart. Small products run on one thread: waking another costs tens of microseconds.
template <int TM, int GROUPS = 1, class Tile>
void for_group_tiles(int64_t m, int64_t n, int64_t group_bytes, int64_t terms, float* y, Tile tile) {
  const int64_t tile_bytes = GROUPS * group_bytes;
  const int64_t grain = std::max<int64_t>(1, PARALLEL_MIN_BYTES / (tile_bytes * std::max<int64_t>(1, m * terms / 4)));
  at::parallel_for(0, (groups_of(n) + GROUPS - 1) / GROUPS, grain, [&](int64_t u0, int64_t u1) {
    alignas(64) float out[8 * GROUPS * TM];
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t g = u * GROUPS, cols = std::min<int64_t>(8 * GROUPS, n - 8 * g);
      for (int64_t m0 = 0; m0 < m; m0 += TM) {
        const int64_t tm = std::min<int64_t>(TM, m - m0);
        tile(g, m0, tm, out);
        for (int64_t i = 0; i < tm; ++i) std::memcpy(y + (m0 + i) * n + 8 * g, out + 8 * GROUPS * i, cols * sizeof(float));
      }
    }
  });
}

// Each type's block functions: a packed block holds 8 rows of 32 values (of a super-block, k-quants).
template <int64_t T> void pack_block(const uint8_t* src, int r, uint8_t* dst);  // a row's GGML block in, as row r
template <int64_t T> void unpack_block(const uint8_t* src, int r, uint8_t* dst);  // row r's GGML block out
template <int64_t T> void dequant_group_block(const uint8_t* blk, float* out, int64_t k);  // 8 rows to float32, row r at out + r k
template <int64_t T> void dequant_row_block(const uint8_t* blk, int r, float* o);  // row r to float32

template <int64_t T>
void pack_rows(const std::vector<const uint8_t*>& rows, int64_t k, uint8_t* out) {
  const int64_t vals = packed_block_values(T), nb = k / vals, gb = packed_block_bytes(T), bb = row_bytes(T, vals);
  const int64_t n = rows.size();
  at::parallel_for(0, groups_of(n), 16, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g)
      for (int r = 0; r < 8 && 8 * g + r < n; ++r)
        for (int64_t b = 0; b < nb; ++b) pack_block<T>(rows[8 * g + r] + b * bb, r, out + (g * nb + b) * gb);
  });
}

template <int64_t T>
void unpack_rows(const uint8_t* packed, int64_t n, int64_t k, uint8_t* out) {
  const int64_t vals = packed_block_values(T), nb = k / vals, gb = packed_block_bytes(T), bb = row_bytes(T, vals);
  for (int64_t row = 0; row < n; ++row)
    for (int64_t b = 0; b < nb; ++b)
      unpack_block<T>(packed + (row / 8 * nb + b) * gb, int(row % 8), out + row * row_bytes(T, k) + b * bb);
}

// Rows [r0, r1) of a packed weight decoded to float32 into out [r1 - r0, k], for BLAS (prefill):
// whole groups of 8 rows with vectors, rows of groups cut by r0 or r1 one at a time.
template <int64_t T>
void dequant_packed_rows(const uint8_t* packed, int64_t k, int64_t r0, int64_t r1, float* out) {
  const int64_t vals = packed_block_values(T), nb = k / vals, gb = packed_block_bytes(T);
  at::parallel_for(r0 / 8, (r1 + 7) / 8, 4, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const uint8_t* gw = packed + g * nb * gb;
      if (8 * g >= r0 && 8 * g + 8 <= r1) {
        for (int64_t b = 0; b < nb; ++b) dequant_group_block<T>(gw + b * gb, out + (8 * g - r0) * k + vals * b, k);
        continue;
      }
      for (int64_t row = std::max(r0, 8 * g); row < std::min(r1, 8 * g + 8); ++row) {
        const int r = int(row % 8);
        float* o = out + (row - r0) * k;
        for (int64_t b = 0; b < nb; ++b, o += vals) dequant_row_block<T>(gw + b * gb, r, o);
      }
    }
  });
}

// The k-quants' packed kernels (packed_kquant_kernels.cpp), for the entry points.
void kquant_pack(int64_t type, const std::vector<const uint8_t*>& rows, int64_t k, uint8_t* out);
void kquant_unpack(int64_t type, const uint8_t* packed, int64_t n, int64_t k, uint8_t* out);
void kquant_dequant(int64_t type, const uint8_t* packed, int64_t k, int64_t r0, int64_t r1, float* out);
void kquant_gemm(int64_t type, const float* x, const uint8_t* w, int64_t m, int64_t terms, int64_t k, int64_t n, float* y);

}  // namespace llamaherd::packed
