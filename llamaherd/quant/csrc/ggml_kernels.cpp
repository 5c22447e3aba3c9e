// Matrix products straight on GGML weight bytes, AVX2 + FMA + F16C.
//
//   * F32, F16, BF16: gemm(x, w) for a few rows of x: each weight row is converted to float in
//     registers and multiplied with every row of x; dequant() decodes runs of rows to
//     float32 for a BLAS matmul (prefill). Results equal "x @ W^T" up to float summation order.
//   * Q2_K .. Q6_K, IQ4_XS: on the file's bytes, a 256-value super-block at a time: multiplied in
//     integers with a few rows of x rounded to int8 (gemm_kquant_q8), or runs of rows decoded
//     to float32 for BLAS (prefill) exactly as GGML decodes them.
//   * Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q8_0: the loader repacks the weight into an 8-row interleaved layout
//     (pack(), described below) and packed_gemm() multiplies it in integers with x rounded to
//     int8 blocks, for any number of rows of x. Results equal "dequantize W, round x to its
//     int8 blocks, then x @ W^T" up to float summation order.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cmath>
#include <cstring>
#include <array>
#include <vector>

namespace {

enum : int64_t { F32 = 0, F16 = 1, BF16 = 30, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, IQ4_NL = 20, IQ4_XS = 23, Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14 };

inline int64_t row_bytes(int64_t type, int64_t k) {
  switch (type) {
    case F32: return k * 4;
    case F16: return k * 2;
    case BF16: return k * 2;
    case Q4_0: return k / 32 * 18;
    case Q4_1: return k / 32 * 20;
    case Q5_0: return k / 32 * 22;
    case Q5_1: return k / 32 * 24;
    case IQ4_NL: return k / 32 * 18;
    case IQ4_XS: return k / 256 * 136;
    case Q8_0: return k / 32 * 34;
    case Q2_K: return k / 256 * 84;
    case Q3_K: return k / 256 * 110;
    case Q4_K: return k / 256 * 144;
    case Q5_K: return k / 256 * 176;
    case Q6_K: return k / 256 * 210;
  }
  TORCH_CHECK(false, "unsupported GGML type ", type);
}

inline float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 8 F32, F16 or BF16 values to float32 (exact: bf16 is float32's top half).
template <int64_t T>
inline __m256 load8_float(const uint8_t* p) {
  if constexpr (T == F32) return _mm256_loadu_ps((const float*)p);
  const __m128i v = _mm_loadu_si128((const __m128i*)p);
  if constexpr (T == F16) return _mm256_cvtph_ps(v);
  else return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

// out[r, :] for rows [r0, r1) of an F16 or BF16 w decoded to float32.
template <int64_t T>
void dequant_rows_16bit(const uint8_t* w, int64_t k, int64_t r0, int64_t r1, float* out) {
  at::parallel_for(r0, r1, 16, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; ++r)
      for (int64_t i = 0; i < k; i += 8) _mm256_storeu_ps(out + (r - r0) * k + i, load8_float<T>(w + r * 2 * k + 2 * i));
  });
}

constexpr int MAX_M = 8;  // rows of x handled together in one pass over the weights
// A single core's hardware prefetch leaves DRAM bandwidth unused when it streams weights:
// the kernels ask for bytes this far ahead (measured best of 512..3072 on a 2-core EPYC).
constexpr int64_t PREFETCH_BYTES = 2048;
// The k-quant kernel does better asking further ahead (measured on the same machine: Q4_K_M
// decode 8% faster at 8 KiB than at 2 KiB, 16 KiB no better; the packed kernels no better at 8).
constexpr int64_t KQUANT_PREFETCH_BYTES = 8192;
constexpr int64_t PARALLEL_MIN_BYTES = 256 << 10;  // weight bytes (per x tile) worth a second thread

// y[m, n] = sum_k x[m, k] * W[n, k] for m < M <= MAX_M, all n in [n0, n1), W in F32, F16 or BF16.
// Its inner loop is a dozen instructions: where it straddles a 64-byte line this Zen 3 runs it
// 1.5x slower (measured, 1.1 vs 1.65 ms for a 5632 x 2048 F16 product), hence the alignment.
template <int64_t T, int M>
__attribute__((optimize("align-loops=64"))) void gemm_float_tile(const float* x, const uint8_t* w, int64_t k, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  constexpr int B = T == F32 ? 4 : 2;  // bytes a value
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w + n * B * k;
    __m256 acc[M];
    for (int i = 0; i < M; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t i = 0; i < k; i += 8) {
      if (i % (64 / B) == 0) _mm_prefetch((const char*)row + B * i + PREFETCH_BYTES, _MM_HINT_T0);
      __m256 wv = load8_float<T>(row + B * i);
      for (int m = 0; m < M; ++m) acc[m] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * k + i), acc[m]);
    }
    for (int m = 0; m < M; ++m) y[m * ldy + n] = hsum(acc[m]);
  }
}

template <int64_t T>
void gemm_float(const float* x, const uint8_t* w, int64_t m, int64_t k, int64_t n, float* y) {
  at::parallel_for(0, n, 32, [&](int64_t n0, int64_t n1) {
    for (int64_t m0 = 0; m0 < m; m0 += MAX_M) {
      const float* xm = x + m0 * k;
      float* ym = y + m0 * n;
      switch (std::min<int64_t>(MAX_M, m - m0)) {
        case 1: gemm_float_tile<T, 1>(xm, w, k, n0, n1, ym, n); break;
        case 2: gemm_float_tile<T, 2>(xm, w, k, n0, n1, ym, n); break;
        case 3: gemm_float_tile<T, 3>(xm, w, k, n0, n1, ym, n); break;
        case 4: gemm_float_tile<T, 4>(xm, w, k, n0, n1, ym, n); break;
        case 5: gemm_float_tile<T, 5>(xm, w, k, n0, n1, ym, n); break;
        case 6: gemm_float_tile<T, 6>(xm, w, k, n0, n1, ym, n); break;
        case 7: gemm_float_tile<T, 7>(xm, w, k, n0, n1, ym, n); break;
        default: gemm_float_tile<T, 8>(xm, w, k, n0, n1, ym, n); break;
      }
    }
  });
}

// --- int8-rounded activations -----------------------------------------------------------

// x [m, k] -> int8 values q [m, k] and one float scale per block of `block` values (32 or
// 256), d [m, k/block]: x ~ d * q.
void quantize_rows_q8(const float* x, int64_t m, int64_t k, int8_t* q, float* d, int64_t block = 32) {
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  for (int64_t i = 0; i < m * k / block; ++i) {
    const float* xb = x + block * i;
    __m256 amax = _mm256_setzero_ps();
    for (int64_t j = 0; j < block; j += 8) amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_bit, _mm256_loadu_ps(xb + j)));
    __m128 mx = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    mx = _mm_max_ps(mx, _mm_movehl_ps(mx, mx));
    mx = _mm_max_ss(mx, _mm_movehdup_ps(mx));
    const float scale = _mm_cvtss_f32(mx) / 127.f;
    d[i] = scale;
    const __m256 inv = _mm256_set1_ps(scale > 0.f ? 1.f / scale : 0.f);
    for (int64_t c = 0; c < block; c += 32) {
      __m256i r[4];
      for (int j = 0; j < 4; ++j)  // round half to even, as torch.round does
        r[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(xb + c + 8 * j), inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      // pack 4 x 8 int32 -> 32 int8 in order (packs work within 128-bit lanes: fix the order after)
      __m256i p16a = _mm256_packs_epi32(r[0], r[1]), p16b = _mm256_packs_epi32(r[2], r[3]);
      __m256i p8 = _mm256_packs_epi16(p16a, p16b);
      p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      _mm256_storeu_si256((__m256i*)(q + block * i + c), p8);
    }
  }
}

// ---- Packed 8-row layout for Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL and Q8_0 -----------------
//
// The loader repacks these weights once (pack()): rows are taken 8 at a time and, for each
// 32-value block, the 8 rows' fp16 scales sit side by side followed by their values
// interleaved 4 at a time, so one 32-byte register holds 4 values of each of the 8 rows.
// One integer multiply-add of such a register with 4 activation values broadcast to all
// lanes then gives partial dot products of all 8 rows at once, lane r for row r: no
// horizontal sums, and each activation block is loaded once per 8 weight rows. This is the
// layout idea of llama.cpp's "repack" CPU buffers (block_q4_0x8), written for our kernels.
// The packed bytes are as many as the file's (rows padded to a multiple of 8 with zeros).
//
// Group g (rows 8g .. 8g+7), block b, at byte (g * nb + b) * group_block_bytes:
//   Q4_0: d[8] fp16 | 4 chunks of 32 bytes                      (144 bytes)
//   Q4_1: d[8] fp16 | m[8] fp16 | 4 chunks of 32 bytes          (160 bytes)
//   Q5_0: d[8] fp16 | qh[8] u32 | 4 chunks of 32 bytes          (176 bytes)
//   Q5_1: d[8] fp16 | m[8] fp16 | qh[8] u32 | 4 chunks          (192 bytes)
//   IQ4_NL: as Q4_0, the nibbles indexing IQ4_LEVELS               (144 bytes)
//   Q8_0: d[8] fp16 | 8 chunks of 32 bytes                      (272 bytes)
// Q4 chunk c: bytes 4r..4r+3 are row r's values 8c+i (low nibble) and 8c+4+i (high nibble).
// Q5: the same chunks hold the low 4 bits; row r's qh (bit v: the fifth bit of value v) is
// GGML's, as it is.
// Q8 chunk c: bytes 4r..4r+3 are row r's values 4c+i.
//
// Activations are rounded per 32-value block to int8 with one float scale (max|x| / 127),
// as llama.cpp does for these weight types; the products are exact integers.

inline int64_t packed_block_bytes(int64_t type) {
  switch (type) {
    case Q4_0: return 144;
    case Q4_1: return 160;
    case Q5_0: return 176;
    case Q5_1: return 192;
    case IQ4_NL: return 144;
    case Q8_0: return 272;
  }
  TORCH_CHECK(false, "GGML type ", type, " has no packed layout");
}

inline int64_t groups_of(int64_t n) { return (n + 7) / 8; }

// The 4- and 5-bit types: where their parts sit in a GGML block and in a packed one.
template <int64_t T> constexpr bool HAS_MIN = T == Q4_1 || T == Q5_1;  // d * q + m, else d * (q - OFFSET)
template <int64_t T> constexpr bool FIVE_BITS = T == Q5_0 || T == Q5_1;
template <int64_t T> constexpr int OFFSET = HAS_MIN<T> ? 0 : (FIVE_BITS<T> ? 16 : 8);
template <int64_t T> constexpr int SRC_QH = HAS_MIN<T> ? 4 : 2;                     // GGML block: d | (m) | (qh) | qs
template <int64_t T> constexpr int SRC_QS = SRC_QH<T> + (FIVE_BITS<T> ? 4 : 0);
template <int64_t T> constexpr int PACKED_QH = HAS_MIN<T> ? 32 : 16;                // packed: d[8] | (m[8]) | (qh[8]) | chunks
template <int64_t T> constexpr int PACKED_QS = PACKED_QH<T> + (FIVE_BITS<T> ? 32 : 0);
// IQ4_NL: Q4_0's layout, but each nibble indexes these 16 levels (GGML's kvalues_iq4nl): d * level
template <int64_t T> constexpr bool LEVELS = T == IQ4_NL;
constexpr int8_t IQ4_LEVELS[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
inline __m256i iq4_levels(__m256i nibbles) {
  const __m128i table = _mm_loadu_si128((const __m128i*)IQ4_LEVELS);
  return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(table), nibbles);
}

// Q5: the fifth bits of chunk c, as 0x10 in the bytes of (lo, hi) that chunk's nibbles fill:
// byte c of row r's qh holds the bits of its values 8c .. 8c+7.
inline void add_fifth_bits(__m256i qh, int c, __m256i& lo, __m256i& hi) {
  const __m256i pick = _mm256_add_epi8(_mm256_setr_epi8(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12,
                                                        0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12), _mm256_set1_epi8(char(c)));
  const __m256i bits = _mm256_shuffle_epi8(qh, pick);
  const __m256i lo_bits = _mm256_set1_epi32(0x08040201), hi_bits = _mm256_set1_epi32(int(0x80402010u)), five = _mm256_set1_epi8(0x10);
  lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(bits, lo_bits), lo_bits), five));
  hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(bits, hi_bits), hi_bits), five));
}

// A row's 32-value block `src` (GGML layout) into packed block `dst`, as row r of the 8.
template <int64_t T>
inline void pack_block(const uint8_t* src, int r, uint8_t* dst) {
  std::memcpy(dst + 2 * r, src, 2);  // d
  if constexpr (T == Q8_0) {
    const int8_t* q = (const int8_t*)(src + 2);
    for (int c = 0; c < 8; ++c) std::memcpy(dst + 16 + 32 * c + 4 * r, q + 4 * c, 4);
  } else {
    const uint8_t* qs = src + SRC_QS<T>;
    uint8_t* out = dst + PACKED_QS<T>;
    if constexpr (HAS_MIN<T>) std::memcpy(dst + 16 + 2 * r, src + 2, 2);  // m
    if constexpr (FIVE_BITS<T>) std::memcpy(dst + PACKED_QH<T> + 4 * r, src + SRC_QH<T>, 4);
    // values 0..15 are the low nibbles, 16..31 the high ones; chunk c takes values 8c..8c+3
    // (low nibble) and 8c+4..8c+7 (high nibble): two byte shuffles and an OR make all four
    const __m128i raw = _mm_loadu_si128((const __m128i*)qs), mask = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(raw, mask), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
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
}

template <int64_t T>
inline void unpack_block(const uint8_t* src, int r, uint8_t* dst) {
  std::memcpy(dst, src + 2 * r, 2);
  if constexpr (T == Q8_0) {
    for (int c = 0; c < 8; ++c) std::memcpy(dst + 2 + 4 * c, src + 16 + 32 * c + 4 * r, 4);
  } else {
    const uint8_t* in = src + PACKED_QS<T>;
    uint8_t* qs = dst + SRC_QS<T>;
    if constexpr (HAS_MIN<T>) std::memcpy(dst + 2, src + 16 + 2 * r, 2);
    if constexpr (FIVE_BITS<T>) std::memcpy(dst + SRC_QH<T>, src + PACKED_QH<T> + 4 * r, 4);
    uint8_t v[32];
    for (int c = 0; c < 4; ++c)
      for (int i = 0; i < 4; ++i) {
        const uint8_t byte = in[32 * c + 4 * r + i];
        v[8 * c + i] = byte & 0x0F;
        v[8 * c + 4 + i] = byte >> 4;
      }
    for (int j = 0; j < 16; ++j) qs[j] = uint8_t(v[j] | (v[j + 16] << 4));
  }
}

template <int64_t T>
void pack_rows(const std::vector<const uint8_t*>& rows, int64_t k, uint8_t* out) {
  const int64_t nb = k / 32, gb = packed_block_bytes(T), bb = row_bytes(T, 32);
  const int64_t n = rows.size();
  at::parallel_for(0, groups_of(n), 16, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g)
      for (int r = 0; r < 8 && 8 * g + r < n; ++r)
        for (int64_t b = 0; b < nb; ++b) pack_block<T>(rows[8 * g + r] + b * bb, r, out + (g * nb + b) * gb);
  });
}

template <int64_t T>
void unpack_rows(const uint8_t* packed, int64_t n, int64_t k, uint8_t* out) {
  const int64_t nb = k / 32, gb = packed_block_bytes(T), bb = row_bytes(T, 32);
  for (int64_t row = 0; row < n; ++row)
    for (int64_t b = 0; b < nb; ++b)
      unpack_block<T>(packed + (row / 8 * nb + b) * gb, int(row % 8), out + row * row_bytes(T, k) + b * bb);
}


// One block of a packed group decoded to float32: row r's 32 values to out + r * k. Each
// register pair (a, b) holds, for every row, 4 values in a's dword r and the next 4 in b's;
// interleaving their dwords lines each row's 8 values up in 64 bits. Same arithmetic as
// GGML's (d * (q - 8 or 16), d * q + m, d * q), so the floats are identical.
template <int64_t T>
inline void dequant_group_block(const uint8_t* blk, float* out, int64_t k) {
  alignas(32) float d[8], m[8];
  _mm256_store_ps(d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)blk)));
  if constexpr (HAS_MIN<T>) _mm256_store_ps(m, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(blk + 16))));
  const uint8_t* q = blk + (T == Q8_0 ? 16 : PACKED_QS<T>);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m256i qh;
  if constexpr (FIVE_BITS<T>) qh = _mm256_loadu_si256((const __m256i*)(blk + PACKED_QH<T>));
  for (int c = 0; c < 4; ++c) {  // values 8c .. 8c+7 of each row
    __m256i a, b;
    if constexpr (T == Q8_0) {
      a = _mm256_loadu_si256((const __m256i*)(q + 64 * c));
      b = _mm256_loadu_si256((const __m256i*)(q + 64 * c + 32));
    } else {
      const __m256i raw = _mm256_loadu_si256((const __m256i*)(q + 32 * c));
      a = _mm256_and_si256(raw, low4);
      b = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
      if constexpr (FIVE_BITS<T>) add_fifth_bits(qh, c, a, b);
      if constexpr (LEVELS<T>) a = iq4_levels(a), b = iq4_levels(b);
    }
    const __m256i lo = _mm256_unpacklo_epi32(a, b), hi = _mm256_unpackhi_epi32(a, b);
    const __m128i pairs[4] = {_mm256_castsi256_si128(lo), _mm256_castsi256_si128(hi),
                              _mm256_extracti128_si256(lo, 1), _mm256_extracti128_si256(hi, 1)};  // rows 01 23 45 67
    for (int r = 0; r < 8; ++r) {
      const __m128i bytes = r % 2 ? _mm_unpackhi_epi64(pairs[r / 2], pairs[r / 2]) : pairs[r / 2];
      __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
      if constexpr (T == Q8_0 || LEVELS<T>) v = _mm256_mul_ps(_mm256_set1_ps(d[r]), v);
      else if constexpr (HAS_MIN<T>) v = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(d[r]), v), _mm256_set1_ps(m[r]));
      else v = _mm256_mul_ps(_mm256_set1_ps(d[r]), _mm256_sub_ps(v, _mm256_set1_ps(float(OFFSET<T>))));
      _mm256_storeu_ps(out + r * k + 8 * c, v);
    }
  }
}

// Rows [r0, r1) of a packed weight decoded to float32 into out [r1 - r0, k], for BLAS (prefill):
// whole groups of 8 rows with vectors, rows of groups cut by r0 or r1 one at a time.
template <int64_t T>
void dequant_packed_rows(const uint8_t* packed, int64_t k, int64_t r0, int64_t r1, float* out) {
  const int64_t nb = k / 32, gb = packed_block_bytes(T);
  at::parallel_for(r0 / 8, (r1 + 7) / 8, 4, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const uint8_t* gw = packed + g * nb * gb;
      if (8 * g >= r0 && 8 * g + 8 <= r1) {
        for (int64_t b = 0; b < nb; ++b) dequant_group_block<T>(gw + b * gb, out + (8 * g - r0) * k + 32 * b, k);
        continue;
      }
      for (int64_t row = std::max(r0, 8 * g); row < std::min(r1, 8 * g + 8); ++row) {
        const int r = int(row % 8);
        float* o = out + (row - r0) * k;
        for (int64_t b = 0; b < nb; ++b, o += 32) {
          const uint8_t* blk = gw + b * gb;
          const float d = half(blk + 2 * r);
          if constexpr (T == Q8_0) {
            for (int c = 0; c < 8; ++c)
              for (int i = 0; i < 4; ++i) o[4 * c + i] = d * float(int8_t(blk[16 + 32 * c + 4 * r + i]));
          } else {
            // as GGML defines them: Q4_0 d * (q - 8), Q5_0 d * (q - 16), Q4_1 and Q5_1 d * q + m
            const float m = HAS_MIN<T> ? half(blk + 16 + 2 * r) : 0.f;
            const uint8_t* q = blk + PACKED_QS<T> + 4 * r;
            uint32_t qh = 0;
            if constexpr (FIVE_BITS<T>) std::memcpy(&qh, blk + PACKED_QH<T> + 4 * r, 4);
            auto value = [&](int v, int nibble) {
              return LEVELS<T> ? int(IQ4_LEVELS[nibble]) : nibble + int((qh >> v) & 1) * 16 - OFFSET<T>;
            };
            for (int c = 0; c < 4; ++c)
              for (int i = 0; i < 4; ++i) {
                o[8 * c + i] = d * float(value(8 * c + i, q[32 * c + i] & 0x0F)) + m;
                o[8 * c + 4 + i] = d * float(value(8 * c + 4 + i, q[32 * c + i] >> 4)) + m;
              }
          }
        }
      }
    }
  });
}
// x rounded to int8 blocks: q [m, k], scale d [m, k/block] and sums s [m, k/32] per 32 values.
struct Q8Act {
  std::vector<int8_t> q;
  std::vector<float> d;
  std::vector<int32_t> s;
};

// Row i of x as `terms` rows of int8 blocks (rows terms*i ..): the first rounds x, each next
// one rounds what the ones before missed (|x - first| <= d/2 per block, so the second's step
// is <= d/254): two terms carry x to about 2^-15 of each block's largest value, three to 2^-22.
// Blocks of 32 values for the packed kernels; of 256 (one scale per k-quant super-block, as
// GGML's Q8_K) for the k-quant ones.
Q8Act quantize_act(const float* x, int64_t m, int64_t k, int64_t terms, int64_t block = 32) {
  const int64_t nb = k / 32, nd = k / block, rows = m * terms;
  Q8Act a{std::vector<int8_t>(rows * k), std::vector<float>(rows * nd), std::vector<int32_t>(rows * nb)};
  at::parallel_for(0, m, 16, [&](int64_t r0, int64_t r1) {
    std::vector<float> rest(k);
    for (int64_t r = r0; r < r1; ++r) {
      const float* src = x + r * k;
      for (int64_t t = 0; t < terms; ++t) {
        const int64_t row = r * terms + t;
        int8_t* q = a.q.data() + row * k;
        float* d = a.d.data() + row * nd;
        quantize_rows_q8(src, 1, k, q, d, block);
        if (t + 1 < terms) {  // what this term leaves for the next
          for (int64_t i = 0; i < k; ++i) rest[i] = src[i] - d[i / block] * float(q[i]);
          src = rest.data();
        }
        for (int64_t b = 0; b < nb; ++b) {
          int32_t sum = 0;
          for (int j = 0; j < 32; ++j) sum += q[32 * b + j];
          a.s[row * nb + b] = sum;
        }
      }
    }
  });
  return a;
}

inline __m256i bcast4(const int8_t* p) {  // 4 int8 values repeated in all 8 lanes
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// y[m, 8g .. 8g+7] for TM rows of x against weight group g (8 rows, lanes of one vector).
template <int64_t T, int TM>
inline void packed_group_tile(const uint8_t* gw, int64_t nb, const Q8Act& a, int64_t m0, int64_t k, float* out8) {
  const int64_t gb = packed_block_bytes(T);
  const __m256i ones16 = _mm256_set1_epi16(1), low4 = _mm256_set1_epi8(0x0F);
  __m256 acc[TM];
  for (int m = 0; m < TM; ++m) acc[m] = _mm256_setzero_ps();
  const int8_t* xq = a.q.data() + m0 * k;
  const float* xd = a.d.data() + m0 * nb;
  const int32_t* xs = a.s.data() + m0 * nb;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = gw + b * gb;
    for (int64_t off = 0; off < gb; off += 64) _mm_prefetch((const char*)blk + PREFETCH_BYTES + off, _MM_HINT_T0);
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)blk));
    if constexpr (T == Q8_0) {
      const uint8_t* qv = blk + 16;
      __m256i dot[TM];
      for (int m = 0; m < TM; ++m) dot[m] = _mm256_setzero_si256();
      for (int c = 0; c < 8; ++c) {
        const __m256i w = _mm256_loadu_si256((const __m256i*)(qv + 32 * c));
        const __m256i aw = _mm256_sign_epi8(w, w);  // |w| as unsigned bytes; the sign moves onto x
        for (int m = 0; m < TM; ++m) {
          const __m256i xv = _mm256_sign_epi8(bcast4(xq + m * k + 32 * b + 4 * c), w);
          // |pair sums| <= 2 * 128 * 127 fit int16; widen to int32 before adding chunks
          dot[m] = _mm256_add_epi32(dot[m], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, xv), ones16));
        }
      }
      for (int m = 0; m < TM; ++m)
        acc[m] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(xd[m * nb + b])), _mm256_cvtepi32_ps(dot[m]), acc[m]);
    } else {
      // the block's 32 nibbles of each of the 8 rows, unpacked once for all TM rows of x
      const uint8_t* qv = blk + PACKED_QS<T>;
      __m256i lo[4], hi[4], qh;
      if constexpr (FIVE_BITS<T>) qh = _mm256_loadu_si256((const __m256i*)(blk + PACKED_QH<T>));
      for (int c = 0; c < 4; ++c) {
        const __m256i raw = _mm256_loadu_si256((const __m256i*)(qv + 32 * c));
        lo[c] = _mm256_and_si256(raw, low4);
        hi[c] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
        if constexpr (FIVE_BITS<T>) add_fifth_bits(qh, c, lo[c], hi[c]);
        if constexpr (LEVELS<T>) lo[c] = iq4_levels(lo[c]), hi[c] = iq4_levels(hi[c]);
      }
      __m256 mw;
      if constexpr (HAS_MIN<T>) mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(blk + 16)));
      for (int m = 0; m < TM; ++m) {
        const int8_t* xb = xq + m * k + 32 * b;
        // unsigned 4-bit x int8: pair sums <= 2 * 15 * 127, all eight <= 30480: int16 holds the
        // block (5-bit: half of it, 4 * 2 * 31 * 127 <= 31496, so two halves).
        // Summed as a tree, not a chain: 25% faster (measured, 15 -> 12 cycles a row-block).
        __m256i dot;
        if constexpr (LEVELS<T>) {  // signed levels: |w| times x carrying w's sign, as Q8_0
          dot = _mm256_setzero_si256();
          for (int c = 0; c < 4; ++c) {  // pair sums <= 2 * 127 * 127: each to int32 on its own
            const __m256i pl = _mm256_maddubs_epi16(_mm256_sign_epi8(lo[c], lo[c]), _mm256_sign_epi8(bcast4(xb + 8 * c), lo[c]));
            const __m256i ph = _mm256_maddubs_epi16(_mm256_sign_epi8(hi[c], hi[c]), _mm256_sign_epi8(bcast4(xb + 8 * c + 4), hi[c]));
            dot = _mm256_add_epi32(dot, _mm256_add_epi32(_mm256_madd_epi16(pl, ones16), _mm256_madd_epi16(ph, ones16)));
          }
        } else {
          __m256i s[4];
          for (int c = 0; c < 4; ++c)
            s[c] = _mm256_add_epi16(_mm256_maddubs_epi16(lo[c], bcast4(xb + 8 * c)),
                                    _mm256_maddubs_epi16(hi[c], bcast4(xb + 8 * c + 4)));
          if constexpr (FIVE_BITS<T>)
            dot = _mm256_add_epi32(_mm256_madd_epi16(_mm256_add_epi16(s[0], s[1]), ones16), _mm256_madd_epi16(_mm256_add_epi16(s[2], s[3]), ones16));
          else
            dot = _mm256_madd_epi16(_mm256_add_epi16(_mm256_add_epi16(s[0], s[1]), _mm256_add_epi16(s[2], s[3])), ones16);
        }
        __m256 f = _mm256_cvtepi32_ps(dot);
        const float d = xd[m * nb + b], sum = float(xs[m * nb + b]);
        if constexpr (!HAS_MIN<T> && !LEVELS<T>)  // values are q - OFFSET (exact: integers < 2^24)
          f = _mm256_fmadd_ps(_mm256_set1_ps(sum), _mm256_set1_ps(-float(OFFSET<T>)), f);
        acc[m] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(d)), f, acc[m]);
        if constexpr (HAS_MIN<T>) acc[m] = _mm256_fmadd_ps(mw, _mm256_set1_ps(d * sum), acc[m]);
      }
    }
  }
  for (int m = 0; m < TM; ++m) _mm256_storeu_ps(out8 + 8 * m, acc[m]);
}

constexpr int PACKED_TM = 4;  // x rows per pass over a weight group (16 vector registers)

// y [rows / terms, n] = the products of the `rows` term rows of `a` (see quantize_act): row r
// adds into y[r / terms]. Threads split the weight groups, so they write apart.
template <int64_t T>
void packed_gemm(const Q8Act& a, const uint8_t* w, int64_t rows, int64_t terms, int64_t k, int64_t n, float* y) {
  const int64_t nb = k / 32, gb = packed_block_bytes(T);
  // Small products run on one thread: waking another costs tens of microseconds.
  const int64_t grain = std::max<int64_t>(1, PARALLEL_MIN_BYTES / (nb * gb * std::max<int64_t>(1, rows / 4)));
  at::parallel_for(0, groups_of(n), grain, [&](int64_t g0, int64_t g1) {
    alignas(32) float out8[8 * PACKED_TM];
    for (int64_t g = g0; g < g1; ++g) {
      const uint8_t* gw = w + g * nb * gb;
      const int64_t cols = std::min<int64_t>(8, n - 8 * g);
      for (int64_t m0 = 0; m0 < rows; m0 += PACKED_TM) {
        const int64_t tm = std::min<int64_t>(PACKED_TM, rows - m0);
        switch (tm) {
          case 1: packed_group_tile<T, 1>(gw, nb, a, m0, k, out8); break;
          case 2: packed_group_tile<T, 2>(gw, nb, a, m0, k, out8); break;
          case 3: packed_group_tile<T, 3>(gw, nb, a, m0, k, out8); break;
          default: packed_group_tile<T, 4>(gw, nb, a, m0, k, out8); break;
        }
        for (int64_t i = 0; i < tm; ++i) {
          float* yr = y + (m0 + i) / terms * n + 8 * g;
          if ((m0 + i) % terms == 0)  // a row's first term: y need not be zeroed first
            for (int64_t c = 0; c < cols; ++c) yr[c] = out8[8 * i + c];
          else
            for (int64_t c = 0; c < cols; ++c) yr[c] += out8[8 * i + c];
        }
      }
    }
  });
}


// ---- k-quants (Q2_K .. Q6_K) and IQ4_XS, in 256-value super-blocks ----------------------
//
// For BLAS runs a 256-value super-block is unpacked at a time to small integers q[256] with a
// scale and a minimum per 16 values (in L1), then y = scale * q - min: the same float
// operations, in the same order, as GGML's dequantize_row_q*_K, so the floats are identical.
// Products with a few rows of x use the integers in registers (gemm_kquant_q8). Weights stay
// as the file has them (memory-mapped).

struct SuperBlock {
  int8_t q[256];
  float scale[16], min[16];

  // Types whose 16 scales are int8 (Q3_K, Q6_K, IQ4_XS) and that have no minimums.
  void set_scales(float d, __m128i s8) {
    alignas(16) int8_t sc[16];
    _mm_store_si128((__m128i*)sc, s8);
    for (int g = 0; g < 16; ++g) {
      scale[g] = d * float(sc[g]);
      min[g] = 0.f;
    }
  }
};

// Q4_K / Q5_K's 12 scale bytes -> the 8 six-bit scales and the 8 minimums of the sub-blocks,
// a byte each (GGML's get_scale_min_k4, 4 sub-blocks at a time): sub-blocks 0-3 in the low 6
// bits of bytes 0-3 (scales) and 4-7 (minimums); 4-7 take their low 4 bits from bytes 8-11
// and their top 2 from the spare top bits of bytes 0-3 and 4-7.
inline void scales_mins_k4(const uint8_t* packed, uint64_t& scales, uint64_t& mins) {
  uint32_t u[3];
  std::memcpy(u, packed, 12);
  const uint32_t s03 = u[0] & 0x3F3F3F3F, m03 = u[1] & 0x3F3F3F3F;
  const uint32_t s47 = (u[2] & 0x0F0F0F0F) | (((u[0] >> 6) & 0x03030303) << 4);
  const uint32_t m47 = ((u[2] >> 4) & 0x0F0F0F0F) | (((u[1] >> 6) & 0x03030303) << 4);
  scales = uint64_t(s03) | uint64_t(s47) << 32;
  mins = uint64_t(m03) | uint64_t(m47) << 32;
}

// Q3_K's 12 scale bytes -> its 16 scales as int8 (six bits, biased by 32): value g takes its
// low 4 bits from byte g (g < 8: low nibble) or g - 8 (high nibble), its top 2 from bits
// 2 * (g / 4) of byte 8 + g % 4 (GGML's layout, decoded here 16 at a time).
inline __m128i scales_k3(const uint8_t* packed) {
  const __m128i lo8 = _mm_loadl_epi64((const __m128i*)packed), low4 = _mm_set1_epi8(0x0F);
  const __m128i low = _mm_unpacklo_epi64(_mm_and_si128(lo8, low4), _mm_and_si128(_mm_srli_epi16(lo8, 4), low4));
  int32_t top;
  std::memcpy(&top, packed + 8, 4);
  const __m128i high = _mm_and_si128(_mm_srlv_epi32(_mm_set1_epi32(top), _mm_setr_epi32(0, 2, 4, 6)), _mm_set1_epi8(0x03));
  return _mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi16(high, 4)), _mm_set1_epi8(32));
}

// IQ4_XS's scales_h (u16) and scales_l[4] -> 16 int8 scales, one per 16 values (each
// sub-block's twice): (nibble j of scales_l | bits 2j..2j+1 of scales_h << 4) - 32.
inline __m128i scales_iq4xs(const uint8_t* packed) {
  uint16_t high;
  uint32_t low;
  std::memcpy(&high, packed, 2);
  std::memcpy(&low, packed + 2, 4);
  alignas(16) int8_t sc[16];
  for (int j = 0; j < 8; ++j)
    sc[2 * j] = sc[2 * j + 1] = int8_t((((low >> (4 * j)) & 0xF) | (((high >> (2 * j)) & 3) << 4)) - 32);
  return _mm_load_si128((const __m128i*)sc);
}

// An IQ4_XS sub-block's 16 bytes -> its 32 values, IQ4_LEVELS (value l: low nibble of byte l,
// l + 16: high nibble).
inline __m256i iq4xs_values(const uint8_t* qs) {
  const __m128i v = _mm_loadu_si128((const __m128i*)qs), low4 = _mm_set1_epi8(0x0F);
  return iq4_levels(_mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), low4), _mm_and_si128(v, low4)));
}

// Sub-block j (32 values) of a Q2_K (0 .. 3) or Q3_K (-4 .. 3) super-block `b`: value
// 128h + 32i + l (j = 4h + i) is bits 2i..2i+1 of qs[32h + l]; Q3_K: minus 4 unless bit j of
// hmask[l] is set. (Q2_K: scales[16] | qs[64] | ..; Q3_K: hmask[32] | qs[64] | ..)
template <int64_t T>
inline __m256i k23_values(const uint8_t* b, int j) {
  const uint8_t* qs = b + (T == Q2_K ? 16 : 32);
  const __m256i v = _mm256_loadu_si256((const __m256i*)(qs + 32 * (j / 4)));
  const __m256i q = _mm256_and_si256(_mm256_srli_epi16(v, 2 * (j % 4)), _mm256_set1_epi8(0x03));
  if constexpr (T == Q2_K) return q;
  const __m256i high = _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i*)b), j), _mm256_set1_epi8(1));
  return _mm256_sub_epi8(_mm256_or_si256(q, _mm256_slli_epi16(high, 2)), _mm256_set1_epi8(4));
}

// With y, also the floats: y[0 .. 256) = scale * q - min.
template <int64_t T>
inline void decode_superblock(const uint8_t* b, SuperBlock& s, float* y = nullptr) {
  if constexpr (T == Q2_K || T == Q3_K) {
    // Q2_K: scales[16] (scale | min << 4) | qs[64] | d | dmin
    // Q3_K: hmask[32] | qs[64] | scales[12] (16 six-bit values, biased by 32) | d
    // Values: k23_values. Sub-block of 16 values g has scale g.
    const float d = half(b + (T == Q2_K ? 80 : 108));
    if constexpr (T == Q2_K) {
      const float dmin = half(b + 82);
      for (int g = 0; g < 16; ++g) {
        s.scale[g] = d * float(b[g] & 0xF);
        s.min[g] = dmin * float(b[g] >> 4);
      }
    } else {
      s.set_scales(d, scales_k3(b + 96));
    }
    for (int j = 0; j < 8; ++j) _mm256_storeu_si256((__m256i*)(s.q + 32 * j), k23_values<T>(b, j));
  } else if constexpr (T == Q4_K || T == Q5_K) {
    // d, dmin | scales[12] | (Q5_K: qh[32]) | qs[128]
    const float d = half(b), dmin = half(b + 2);
    const uint8_t* sc = b + 4;
    const uint8_t* qh = b + 16;
    const uint8_t* ql = b + (T == Q5_K ? 48 : 16);
    uint64_t scales, mins;
    scales_mins_k4(sc, scales, mins);
    for (int j = 0; j < 8; ++j) {
      s.scale[2 * j] = s.scale[2 * j + 1] = d * float(uint8_t(scales >> (8 * j)));
      s.min[2 * j] = s.min[2 * j + 1] = dmin * float(uint8_t(mins >> (8 * j)));
    }
    const __m256i low4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    __m256i h;
    if constexpr (T == Q5_K) h = _mm256_loadu_si256((const __m256i*)qh);
    for (int j = 0; j < 4; ++j) {  // 64 values: 32 low nibbles, then 32 high ones (+ Q5_K's fifth bits)
      const __m256i v = _mm256_loadu_si256((const __m256i*)(ql + 32 * j));
      __m256i lo = _mm256_and_si256(v, low4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
      if constexpr (T == Q5_K) {
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2 * j), one), 4));
        hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2 * j + 1), one), 4));
      }
      _mm256_storeu_si256((__m256i*)(s.q + 64 * j), lo);
      _mm256_storeu_si256((__m256i*)(s.q + 64 * j + 32), hi);
    }
  } else if constexpr (T == IQ4_XS) {
    // d | scales_h (u16) | scales_l[4] | qs[128]; sub-block j: its 6-bit scale (less 32) from
    // nibble j of scales_l and bits 2j of scales_h; its 32 values levels of the nibbles of
    // qs[16j ..] (value l low, l + 16 high)
    s.set_scales(half(b), scales_iq4xs(b + 2));
    for (int j = 0; j < 8; ++j) _mm256_storeu_si256((__m256i*)(s.q + 32 * j), iq4xs_values(b + 8 + 16 * j));
  } else {  // Q6_K: ql[128] | qh[64] | scales[16] (int8) | d
    const uint8_t *ql = b, *qh = b + 128;
    s.set_scales(half(b + 208), _mm_loadu_si128((const __m128i*)(b + 192)));
    const __m256i low4 = _mm256_set1_epi8(0x0F), low2 = _mm256_set1_epi8(0x03), bias = _mm256_set1_epi8(32);
    for (int half_ = 0; half_ < 2; ++half_, ql += 64, qh += 32) {  // 128 values: 4 runs of 32
      const __m256i a = _mm256_loadu_si256((const __m256i*)ql), b2 = _mm256_loadu_si256((const __m256i*)(ql + 32));
      const __m256i c = _mm256_loadu_si256((const __m256i*)qh);
      const __m256i lows[4] = {_mm256_and_si256(a, low4), _mm256_and_si256(b2, low4),
                               _mm256_and_si256(_mm256_srli_epi16(a, 4), low4), _mm256_and_si256(_mm256_srli_epi16(b2, 4), low4)};
      for (int t = 0; t < 4; ++t) {
        const __m256i top = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(c, 2 * t), low2), 4);
        _mm256_storeu_si256((__m256i*)(s.q + 128 * half_ + 32 * t), _mm256_sub_epi8(_mm256_or_si256(lows[t], top), bias));
      }
    }
  }
  if (y == nullptr) return;
  for (int g = 0; g < 16; ++g) {  // y = scale * q - min, 16 values per scale
    const __m256 sc = _mm256_set1_ps(s.scale[g]), mn = _mm256_set1_ps(s.min[g]);
    for (int h = 0; h < 2; ++h) {
      const int i = 16 * g + 8 * h;
      const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(s.q + i))));
      _mm256_storeu_ps(y + i, _mm256_sub_ps(_mm256_mul_ps(sc, q), mn));
    }
  }
}

// Rows [r0, r1) of a k-quant weight (rows of k values) decoded to float32 into out [r1 - r0, k].
template <int64_t T>
void dequant_kquant_rows(const uint8_t* w, int64_t k, int64_t r0, int64_t r1, float* out) {
  const int64_t rb = row_bytes(T, k), bb = row_bytes(T, 256);
  at::parallel_for(r0, r1, 8, [&](int64_t a, int64_t e) {
    SuperBlock s;
    for (int64_t r = a; r < e; ++r)
      for (int64_t j = 0; j < k / 256; ++j) decode_superblock<T>(w + r * rb + j * bb, s, out + (r - r0) * k + 256 * j);
  });
}

// 16 int8 scales, one per 16 values of a super-block -> for each 32-value sub-block j, its two
// scales as int16: scale 2j in the low 128-bit lane, 2j + 1 in the high one (the lanes of one
// maddubs result).
inline void scales_int16(__m128i s8, __m256i sc16[8]) {
  for (int j = 0; j < 8; ++j) {
    const __m128i pick = _mm_setr_epi8(2 * j, 2 * j, 2 * j, 2 * j, 2 * j, 2 * j, 2 * j, 2 * j,
                                       2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j + 1);
    sc16[j] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(s8, pick));
  }
}

// y [m, n] = x [m, k] @ W^T for a k-quant and a few rows of x, in integers, like GGML's
// ggml_vec_dot_q*_K_q8_K: x rounded to int8 with one scale per 256 values (in `terms` terms,
// quantize_act: three carry x to float32's precision), each weight sub-block of 32 multiplied
// with it by byte multiply-adds (32 products an instruction, against 8 for float
// multiply-adds: the float kernel this replaced was bound by its arithmetic, about 2x
// slower), the sub-block scales applied in int16 multiply-adds, so a super-block's products
// stay integers until one float multiply-add. The minimums' share of Q4_K / Q5_K,
// - dmin * m_j * sum(x_j), uses x's float sums, once per row of x. Each super-block is
// unpacked once, from the file's own bytes, for all rows of x.
// R > 0: compiled for exactly R term rows (m * terms), so their sums stay in registers: decoding
// one row of x with 1 or 3 terms runs 6-20% faster than the general loop (measured, Q4_K, Q6_K).
template <int64_t T, int R = 0>
void gemm_kquant_q8(const float* x, const uint8_t* w, int64_t m, int64_t k, int64_t n, int64_t terms, float* y) {
  if constexpr (R == 0) {
    if (m * terms == 1) return gemm_kquant_q8<T, 1>(x, w, m, k, n, terms, y);
    if (m * terms == 3) return gemm_kquant_q8<T, 3>(x, w, m, k, n, terms, y);
  }
  const int64_t nb = k / 32, nsb = k / 256, rows = R > 0 ? R : m * terms;
  const Q8Act a = quantize_act(x, m, k, terms, 256);
  std::vector<float> xsum(m * nb), xsum16(T == Q2_K ? 2 * m * nb : 0);  // float sums of x per 32 (16) values
  for (int64_t i = 0; i < m * nb; ++i) {
    float t = 0.f;
    for (int v = 0; v < 32; ++v) t += x[32 * i + v];
    xsum[i] = t;
  }
  for (int64_t i = 0; i < int64_t(xsum16.size()); ++i) {
    float t = 0.f;
    for (int v = 0; v < 16; ++v) t += x[16 * i + v];
    xsum16[i] = t;
  }
  const int64_t rb = row_bytes(T, k), bb = row_bytes(T, 256);
  const int64_t grain = std::max<int64_t>(1, PARALLEL_MIN_BYTES / (rb * std::max<int64_t>(1, rows / 4)));
  at::parallel_for(0, n, grain, [&](int64_t n0, int64_t n1) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    std::conditional_t<(R > 0), std::array<__m256, R>, std::vector<__m256>> acc{};
    if constexpr (R == 0) acc.resize(rows);
    // one super-block's weights, sub-block j in q[j] (unsigned; Q6_K: |q - 32|, its sign in
    // sg[j]), and the sub-block scales as int16, one per pair of maddubs sums
    __m256i q[8], sg[8], sc16[8];
    for (int64_t r = n0; r < n1; ++r) {
      const uint8_t* row = w + r * rb;
      for (int64_t i = 0; i < rows; ++i) acc[i] = _mm256_setzero_ps();
      for (int64_t sb = 0; sb < nsb; ++sb) {
        const uint8_t* b = row + sb * bb;
        for (int64_t off = 0; off < bb; off += 64) _mm_prefetch((const char*)b + KQUANT_PREFETCH_BYTES + off, _MM_HINT_T0);
        float d;
        __m256 mn, mn_hi;  // minimums per 32 values (Q4_K, Q5_K) or per 16 (Q2_K, two vectors)
        if constexpr (T == Q2_K || T == Q3_K) {  // layouts: decode_superblock
          __m128i s8;  // the 16 int8 scales, one per 16 values
          if constexpr (T == Q2_K) {
            d = half(b + 80);
            const __m128i packed = _mm_loadu_si128((const __m128i*)b);  // scale | min << 4
            s8 = _mm_and_si128(packed, _mm_set1_epi8(0x0F));
            const __m128i m8 = _mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(0x0F));
            const __m256 dmin = _mm256_set1_ps(half(b + 82));
            mn = _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(m8)));
            mn_hi = _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(m8, 8))));
          } else {
            d = half(b + 108);
            s8 = scales_k3(b + 96);
          }
          scales_int16(s8, sc16);
          for (int j = 0; j < 8; ++j) {
            if constexpr (T == Q3_K) {  // -4 .. 3: the sign moved onto x
              sg[j] = k23_values<T>(b, j);
              q[j] = _mm256_sign_epi8(sg[j], sg[j]);
            } else {
              q[j] = k23_values<T>(b, j);
            }
          }
        } else if constexpr (T == Q4_K || T == Q5_K) {
          uint64_t scales, mins;
          scales_mins_k4(b + 4, scales, mins);
          const __m128i scb = _mm_cvtsi64_si128(int64_t(scales)), mnb = _mm_cvtsi64_si128(int64_t(mins));
          d = half(b);
          mn = _mm256_mul_ps(_mm256_set1_ps(half(b + 2)), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mnb)));
          const __m256i s16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(scb));  // scales as int16, both lanes
          for (int j = 0; j < 8; ++j)
            sc16[j] = _mm256_shuffle_epi8(s16, _mm256_set1_epi16(int16_t(0x0100 + 0x0202 * j)));
          const uint8_t* ql = b + (T == Q5_K ? 48 : 16);
          __m256i h;
          if constexpr (T == Q5_K) h = _mm256_loadu_si256((const __m256i*)(b + 16));
          const __m256i one = _mm256_set1_epi8(1);
          for (int c = 0; c < 4; ++c) {  // sub-block 2c: the low nibbles of chunk c; 2c + 1: the high ones
            const __m256i v = _mm256_loadu_si256((const __m256i*)(ql + 32 * c));
            q[2 * c] = _mm256_and_si256(v, low4);
            q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
            if constexpr (T == Q5_K) {  // + the fifth bits
              q[2 * c] = _mm256_or_si256(q[2 * c], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2 * c), one), 4));
              q[2 * c + 1] = _mm256_or_si256(q[2 * c + 1], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2 * c + 1), one), 4));
            }
          }
        } else if constexpr (T == IQ4_XS) {  // signed levels, their sign moved onto x
          d = half(b);
          scales_int16(scales_iq4xs(b + 2), sc16);
          for (int j = 0; j < 8; ++j) {
            sg[j] = iq4xs_values(b + 8 + 16 * j);
            q[j] = _mm256_sign_epi8(sg[j], sg[j]);
          }
        } else {  // Q6_K: ql[128] | qh[64] | scales[16] (int8, one per 16 values) | d
          d = half(b + 208);
          scales_int16(_mm_loadu_si128((const __m128i*)(b + 192)), sc16);
          const __m256i low2 = _mm256_set1_epi8(0x03), bias = _mm256_set1_epi8(32);
          for (int half_ = 0; half_ < 2; ++half_) {  // as decode_superblock: 128 values, 4 runs of 32
            const uint8_t* ql = b + 64 * half_;
            const __m256i lo = _mm256_loadu_si256((const __m256i*)ql), hi = _mm256_loadu_si256((const __m256i*)(ql + 32));
            const __m256i c = _mm256_loadu_si256((const __m256i*)(b + 128 + 32 * half_));
            const __m256i lows[4] = {_mm256_and_si256(lo, low4), _mm256_and_si256(hi, low4),
                                     _mm256_and_si256(_mm256_srli_epi16(lo, 4), low4), _mm256_and_si256(_mm256_srli_epi16(hi, 4), low4)};
            for (int t = 0; t < 4; ++t) {
              const __m256i top = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(c, 2 * t), low2), 4);
              const __m256i v = _mm256_sub_epi8(_mm256_or_si256(lows[t], top), bias);  // -32 .. 31
              q[4 * half_ + t] = _mm256_sign_epi8(v, v);
              sg[4 * half_ + t] = v;
            }
          }
        }
        // pair sums <= 2 * 32 * 127 (Q6_K) or 2 * 31 * 128 fit int16; times a 6- or 8-bit scale, 8
        // sub-blocks of them fit int32. Q6_K, Q3_K, IQ4_XS: the weight's sign moved onto x.
        constexpr bool SIGNED = T == Q6_K || T == Q3_K || T == IQ4_XS;
        if constexpr (R > 0) {  // each weight register meets the R rows in turn, their sums in registers
          __m256i isum[R];
          for (int i = 0; i < R; ++i) isum[i] = _mm256_setzero_si256();
          for (int j = 0; j < 8; ++j)
            for (int i = 0; i < R; ++i) {
              __m256i xv = _mm256_loadu_si256((const __m256i*)(a.q.data() + i * k + 256 * sb + 32 * j));
              if constexpr (SIGNED) xv = _mm256_sign_epi8(xv, sg[j]);
              isum[i] = _mm256_add_epi32(isum[i], _mm256_madd_epi16(_mm256_maddubs_epi16(q[j], xv), sc16[j]));
            }
          for (int i = 0; i < R; ++i)
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), _mm256_set1_ps(d * a.d[i * nsb + sb]), acc[i]);
        } else {  // row by row (in that order measured 15% faster than the above for 4 rows)
          for (int64_t i = 0; i < rows; ++i) {
            const int8_t* xq = a.q.data() + i * k + 256 * sb;
            __m256i isum = _mm256_setzero_si256();
            for (int j = 0; j < 8; ++j) {
              __m256i xv = _mm256_loadu_si256((const __m256i*)(xq + 32 * j));
              if constexpr (SIGNED) xv = _mm256_sign_epi8(xv, sg[j]);
              isum = _mm256_add_epi32(isum, _mm256_madd_epi16(_mm256_maddubs_epi16(q[j], xv), sc16[j]));
            }
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(d * a.d[i * nsb + sb]), acc[i]);
          }
        }
        if constexpr (T == Q4_K || T == Q5_K)
          for (int64_t i = 0; i < m; ++i)
            acc[i * terms] = _mm256_fnmadd_ps(mn, _mm256_loadu_ps(xsum.data() + i * nb + 8 * sb), acc[i * terms]);
        if constexpr (T == Q2_K)
          for (int64_t i = 0; i < m; ++i) {
            const float* xs = xsum16.data() + i * 2 * nb + 16 * sb;
            acc[i * terms] = _mm256_fnmadd_ps(mn_hi, _mm256_loadu_ps(xs + 8), _mm256_fnmadd_ps(mn, _mm256_loadu_ps(xs), acc[i * terms]));
          }
      }
      for (int64_t i = 0; i < m; ++i) {
        __m256 t = acc[i * terms];
        for (int64_t u = 1; u < terms; ++u) t = _mm256_add_ps(t, acc[i * terms + u]);
        y[i * n + r] = hsum(t);
      }
    }
  });
}

void check(const torch::Tensor& w, int64_t type, int64_t n, int64_t k) {
  TORCH_CHECK(w.dtype() == torch::kUInt8 && w.is_contiguous() && w.dim() == 1, "w must be contiguous 1-D uint8");
  const int64_t block = type == F32 || type == F16 || type == BF16 ? 8 : ((type >= Q2_K && type <= Q6_K) || type == IQ4_XS ? 256 : 32);  // floats: one vector
  TORCH_CHECK(k % block == 0, "row length must be a multiple of ", block);
  TORCH_CHECK(w.numel() == n * row_bytes(type, k), "w has ", w.numel(), " bytes, expected ", n * row_bytes(type, k));
}

}  // namespace

// x: float32 [M, K]; w: an F32, F16 or BF16 weight's bytes (N rows of K values). Returns float32 [M, N].
torch::Tensor gemm_float_rows(torch::Tensor x, torch::Tensor w, int64_t type, int64_t n) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() == 2, "x must be 2-D float32");
  TORCH_CHECK(type == F32 || type == F16 || type == BF16, "GGML type ", type, " is not F32, F16 or BF16");
  x = x.contiguous();
  const int64_t m = x.size(0), k = x.size(1);
  check(w, type, n, k);
  auto y = torch::empty({m, n}, x.options());
  if (type == F32) gemm_float<F32>(x.data_ptr<float>(), w.data_ptr<uint8_t>(), m, k, n, y.data_ptr<float>());
  else if (type == F16) gemm_float<F16>(x.data_ptr<float>(), w.data_ptr<uint8_t>(), m, k, n, y.data_ptr<float>());
  else gemm_float<BF16>(x.data_ptr<float>(), w.data_ptr<uint8_t>(), m, k, n, y.data_ptr<float>());
  return y;
}

// Rows [r0, r1) of an N x K F16 or BF16 weight decoded into `out` (float32 [r1 - r0, K], contiguous).
void dequant_16bit(torch::Tensor w, int64_t type, int64_t n, int64_t k, int64_t r0, int64_t r1, torch::Tensor out) {
  TORCH_CHECK(type == F16 || type == BF16, "GGML type ", type, " is not F16 or BF16");
  check(w, type, n, k);
  TORCH_CHECK(0 <= r0 && r0 <= r1 && r1 <= n, "bad row range");
  TORCH_CHECK(out.dtype() == torch::kFloat32 && out.is_contiguous() && out.numel() >= (r1 - r0) * k, "bad output");
  if (type == F16) dequant_rows_16bit<F16>(w.data_ptr<uint8_t>(), k, r0, r1, out.data_ptr<float>());
  else dequant_rows_16bit<BF16>(w.data_ptr<uint8_t>(), k, r0, r1, out.data_ptr<float>());
}

// The weights `parts` (GGML bytes of one type, K values a row) stacked by rows and packed.
torch::Tensor pack(std::vector<torch::Tensor> parts, int64_t type, int64_t k) {
  TORCH_CHECK(k > 0 && k % 32 == 0, "row length must be a positive multiple of 32");
  const int64_t rb = row_bytes(type, k);
  std::vector<const uint8_t*> rows;
  for (const auto& p : parts) {
    TORCH_CHECK(p.dtype() == torch::kUInt8 && p.is_contiguous() && p.dim() == 1 && p.numel() % rb == 0,
                "each part must be contiguous 1-D uint8 holding whole rows");
    for (int64_t r = 0; r < p.numel() / rb; ++r) rows.push_back(p.data_ptr<uint8_t>() + r * rb);
  }
  const int64_t n = rows.size();
  const int64_t group_bytes = (k / 32) * packed_block_bytes(type);
  auto out = torch::empty({groups_of(n) * group_bytes}, torch::kUInt8);
  if (n % 8) std::memset(out.data_ptr<uint8_t>() + (groups_of(n) - 1) * group_bytes, 0, group_bytes);  // padding rows
  switch (type) {
    case Q4_0: pack_rows<Q4_0>(rows, k, out.data_ptr<uint8_t>()); break;
    case Q4_1: pack_rows<Q4_1>(rows, k, out.data_ptr<uint8_t>()); break;
    case Q5_0: pack_rows<Q5_0>(rows, k, out.data_ptr<uint8_t>()); break;
    case Q5_1: pack_rows<Q5_1>(rows, k, out.data_ptr<uint8_t>()); break;
    case IQ4_NL: pack_rows<IQ4_NL>(rows, k, out.data_ptr<uint8_t>()); break;
    case Q8_0: pack_rows<Q8_0>(rows, k, out.data_ptr<uint8_t>()); break;
    default: TORCH_CHECK(false, "GGML type ", type, " has no packed layout");
  }
  return out;
}

void check_packed(const torch::Tensor& w, int64_t type, int64_t n, int64_t k) {
  TORCH_CHECK(k > 0 && k % 32 == 0, "row length must be a positive multiple of 32");
  TORCH_CHECK(w.dtype() == torch::kUInt8 && w.is_contiguous() && w.dim() == 1, "packed weight must be contiguous 1-D uint8");
  TORCH_CHECK(w.numel() == groups_of(n) * (k / 32) * packed_block_bytes(type), "packed weight has ", w.numel(),
              " bytes, not the size of ", n, " rows of ", k);
}

// The GGML bytes of a packed weight (N rows of K values), exactly as they were before pack().
torch::Tensor unpack(torch::Tensor w, int64_t type, int64_t n, int64_t k) {
  check_packed(w, type, n, k);
  auto out = torch::empty({n * row_bytes(type, k)}, torch::kUInt8);
  switch (type) {
    case Q4_0: unpack_rows<Q4_0>(w.data_ptr<uint8_t>(), n, k, out.data_ptr<uint8_t>()); break;
    case Q4_1: unpack_rows<Q4_1>(w.data_ptr<uint8_t>(), n, k, out.data_ptr<uint8_t>()); break;
    case Q5_0: unpack_rows<Q5_0>(w.data_ptr<uint8_t>(), n, k, out.data_ptr<uint8_t>()); break;
    case Q5_1: unpack_rows<Q5_1>(w.data_ptr<uint8_t>(), n, k, out.data_ptr<uint8_t>()); break;
    case IQ4_NL: unpack_rows<IQ4_NL>(w.data_ptr<uint8_t>(), n, k, out.data_ptr<uint8_t>()); break;
    case Q8_0: unpack_rows<Q8_0>(w.data_ptr<uint8_t>(), n, k, out.data_ptr<uint8_t>()); break;
    default: TORCH_CHECK(false, "GGML type ", type, " has no packed layout");
  }
  return out;
}

// Rows [r0, r1) of a packed N x K weight decoded into `out` (float32 [r1 - r0, K], contiguous).
void dequant_packed(torch::Tensor w, int64_t type, int64_t n, int64_t k, int64_t r0, int64_t r1, torch::Tensor out) {
  check_packed(w, type, n, k);
  TORCH_CHECK(0 <= r0 && r0 <= r1 && r1 <= n, "bad row range");
  TORCH_CHECK(out.dtype() == torch::kFloat32 && out.is_contiguous() && out.numel() >= (r1 - r0) * k, "bad output");
  switch (type) {
    case Q4_0: dequant_packed_rows<Q4_0>(w.data_ptr<uint8_t>(), k, r0, r1, out.data_ptr<float>()); break;
    case Q4_1: dequant_packed_rows<Q4_1>(w.data_ptr<uint8_t>(), k, r0, r1, out.data_ptr<float>()); break;
    case Q5_0: dequant_packed_rows<Q5_0>(w.data_ptr<uint8_t>(), k, r0, r1, out.data_ptr<float>()); break;
    case Q5_1: dequant_packed_rows<Q5_1>(w.data_ptr<uint8_t>(), k, r0, r1, out.data_ptr<float>()); break;
    case IQ4_NL: dequant_packed_rows<IQ4_NL>(w.data_ptr<uint8_t>(), k, r0, r1, out.data_ptr<float>()); break;
    case Q8_0: dequant_packed_rows<Q8_0>(w.data_ptr<uint8_t>(), k, r0, r1, out.data_ptr<float>()); break;
    default: TORCH_CHECK(false, "GGML type ", type, " has no packed layout");
  }
}

// The integer products' x (float32 [..., K], any leading dimensions) as rows [M, K], checked
// with x_terms, and the shape of their result [..., N].
struct ProductRows {
  torch::Tensor x;
  std::vector<int64_t> out_shape;
  int64_t m, k;
};

static ProductRows product_rows(torch::Tensor x, int64_t n, int64_t x_terms) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() >= 1, "x must be float32 [..., K]");
  TORCH_CHECK(1 <= x_terms && x_terms <= 3, "x_terms must be 1, 2 or 3");
  auto out_shape = x.sizes().vec();
  const int64_t k = out_shape.back();
  out_shape.back() = n;
  x = x.contiguous().view({-1, k});
  return {x, out_shape, x.size(0), k};
}

// x: float32 [..., K]; w: a packed weight of N rows; x_terms: 1 to 3 int8 terms per row of x
// (see quantize_act). Returns float32 [..., N].
torch::Tensor gemm_packed(torch::Tensor x_in, torch::Tensor w, int64_t type, int64_t n, int64_t x_terms) {
  auto [x, out_shape, m, k] = product_rows(x_in, n, x_terms);
  check_packed(w, type, n, k);
  auto y = torch::empty({m, n}, x.options());
  const Q8Act a = quantize_act(x.data_ptr<float>(), m, k, x_terms);
  const int64_t rows = m * x_terms;
  switch (type) {
    case Q4_0: packed_gemm<Q4_0>(a, w.data_ptr<uint8_t>(), rows, x_terms, k, n, y.data_ptr<float>()); break;
    case Q4_1: packed_gemm<Q4_1>(a, w.data_ptr<uint8_t>(), rows, x_terms, k, n, y.data_ptr<float>()); break;
    case Q5_0: packed_gemm<Q5_0>(a, w.data_ptr<uint8_t>(), rows, x_terms, k, n, y.data_ptr<float>()); break;
    case Q5_1: packed_gemm<Q5_1>(a, w.data_ptr<uint8_t>(), rows, x_terms, k, n, y.data_ptr<float>()); break;
    case IQ4_NL: packed_gemm<IQ4_NL>(a, w.data_ptr<uint8_t>(), rows, x_terms, k, n, y.data_ptr<float>()); break;
    case Q8_0: packed_gemm<Q8_0>(a, w.data_ptr<uint8_t>(), rows, x_terms, k, n, y.data_ptr<float>()); break;
    default: TORCH_CHECK(false, "GGML type ", type, " has no packed layout");
  }
  return y.view(out_shape);
}

// x: float32 [..., K] (a few rows); w: a k-quant weight's bytes (N rows); x_terms:
// 1 to 3 int8 terms per row of x (see gemm_kquant_q8). Returns [..., N].
torch::Tensor gemm_kquant_rows(torch::Tensor x_in, torch::Tensor w, int64_t type, int64_t n, int64_t x_terms) {
  auto [x, out_shape, m, k] = product_rows(x_in, n, x_terms);
  TORCH_CHECK(m <= MAX_M, "gemm_kquant takes at most ", MAX_M, " rows");
  check(w, type, n, k);
  auto y = torch::empty({m, n}, x.options());
  switch (type) {
    case Q2_K: gemm_kquant_q8<Q2_K>(x.data_ptr<float>(), w.data_ptr<uint8_t>(), m, k, n, x_terms, y.data_ptr<float>()); break;
    case Q3_K: gemm_kquant_q8<Q3_K>(x.data_ptr<float>(), w.data_ptr<uint8_t>(), m, k, n, x_terms, y.data_ptr<float>()); break;
    case Q4_K: gemm_kquant_q8<Q4_K>(x.data_ptr<float>(), w.data_ptr<uint8_t>(), m, k, n, x_terms, y.data_ptr<float>()); break;
    case Q5_K: gemm_kquant_q8<Q5_K>(x.data_ptr<float>(), w.data_ptr<uint8_t>(), m, k, n, x_terms, y.data_ptr<float>()); break;
    case Q6_K: gemm_kquant_q8<Q6_K>(x.data_ptr<float>(), w.data_ptr<uint8_t>(), m, k, n, x_terms, y.data_ptr<float>()); break;
    case IQ4_XS: gemm_kquant_q8<IQ4_XS>(x.data_ptr<float>(), w.data_ptr<uint8_t>(), m, k, n, x_terms, y.data_ptr<float>()); break;
    default: TORCH_CHECK(false, "GGML type ", type, " is not a k-quant with a native kernel");
  }
  return y.view(out_shape);
}

void dequant_kquant(torch::Tensor w, int64_t type, int64_t n, int64_t k, int64_t r0, int64_t r1, torch::Tensor out) {
  check(w, type, n, k);
  TORCH_CHECK(0 <= r0 && r0 <= r1 && r1 <= n, "rows out of range");
  TORCH_CHECK(out.dtype() == torch::kFloat32 && out.is_contiguous() && out.numel() == (r1 - r0) * k, "out must be float32 [r1 - r0, k]");
  switch (type) {
    case Q2_K: dequant_kquant_rows<Q2_K>(w.data_ptr<uint8_t>(), k, r0, r1, out.data_ptr<float>()); break;
    case Q3_K: dequant_kquant_rows<Q3_K>(w.data_ptr<uint8_t>(), k, r0, r1, out.data_ptr<float>()); break;
    case Q4_K: dequant_kquant_rows<Q4_K>(w.data_ptr<uint8_t>(), k, r0, r1, out.data_ptr<float>()); break;
    case Q5_K: dequant_kquant_rows<Q5_K>(w.data_ptr<uint8_t>(), k, r0, r1, out.data_ptr<float>()); break;
    case Q6_K: dequant_kquant_rows<Q6_K>(w.data_ptr<uint8_t>(), k, r0, r1, out.data_ptr<float>()); break;
    case IQ4_XS: dequant_kquant_rows<IQ4_XS>(w.data_ptr<uint8_t>(), k, r0, r1, out.data_ptr<float>()); break;
    default: TORCH_CHECK(false, "GGML type ", type, " is not a k-quant with a native kernel");
  }
}

// ---- Small fused float32 ops of a decode step -----------------------------------------
// Each replaces several torch ops whose dispatch costs (microseconds each, hundreds per
// token) rival the matrix products of a small model. Row-parallel, same math as torch.

// e^x for 8 floats: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two constants so r stays
// exact), e^r by a degree-6 polynomial (Cephes' expf coefficients), 2^n put in the exponent
// bits. Relative error about 1e-7 over [-87, 88]; below that the result flushes to 0.
inline __m256 exp8(__m256 x) {
  // clamped with the constant first: min/max return their second operand for NaN, so NaN stays NaN
  x = _mm256_max_ps(_mm256_set1_ps(-87.33f), _mm256_min_ps(_mm256_set1_ps(88.37f), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  for (float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

// x [..., D] -> x / sqrt(mean(x^2) + eps) * w
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && w.dtype() == torch::kFloat32 && x.dim() >= 1 && w.dim() == 1 &&
              x.size(-1) == w.size(0), "rms_norm: x float32 [..., D], w float32 [D]");
  x = x.contiguous();
  w = w.contiguous();
  const int64_t d = x.size(-1), m = x.numel() / std::max<int64_t>(d, 1);
  auto y = torch::empty_like(x);
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, m, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * d;
      float* yr = yp + r * d;
      __m256 acc = _mm256_setzero_ps();
      int64_t i = 0;
      for (; i + 8 <= d; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(xr + i), _mm256_loadu_ps(xr + i), acc);
      float ss = hsum(acc);
      for (; i < d; ++i) ss += xr[i] * xr[i];
      const float inv = 1.f / std::sqrt(ss / float(d) + float(eps));
      const __m256 vinv = _mm256_set1_ps(inv);
      for (i = 0; i + 8 <= d; i += 8)
        _mm256_storeu_ps(yr + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + i), vinv), _mm256_loadu_ps(wp + i)));
      for (; i < d; ++i) yr[i] = xr[i] * inv * wp[i];
    }
  });
  return y;
}

// gu [..., 2H] (gate | up side by side) -> silu(gate) * up = gate / (1 + e^-gate) * up, [..., H]
torch::Tensor silu_mul(torch::Tensor gu) {
  TORCH_CHECK(gu.dtype() == torch::kFloat32 && gu.dim() >= 1 && gu.size(-1) % 2 == 0, "silu_mul: float32 [..., 2H]");
  gu = gu.contiguous();
  auto shape = gu.sizes().vec();
  const int64_t h = shape.back() / 2, m = gu.numel() / std::max<int64_t>(2 * h, 1);
  shape.back() = h;
  auto y = torch::empty(shape, gu.options());
  const float* src = gu.data_ptr<float>();
  float* dst = y.data_ptr<float>();
  const __m256 one = _mm256_set1_ps(1.f), sign_bit = _mm256_set1_ps(-0.0f);
  at::parallel_for(0, m, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(h, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *g = src + r * 2 * h, *u = g + h;
      float* o = dst + r * h;
      int64_t i = 0;
      for (; i + 8 <= h; i += 8) {
        const __m256 gv = _mm256_loadu_ps(g + i);
        const __m256 sig = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_xor_ps(gv, sign_bit))));
        _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_mul_ps(gv, sig), _mm256_loadu_ps(u + i)));
      }
      for (; i < h; ++i) o[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
    }
  });
  return y;
}

// Rotate the interleaved pairs of x [D] by rot [D/2][2] (cos, sin), into out.
inline void rotate_pairs(const float* x, const float* rot, int64_t d, float* out) {
  for (int64_t i = 0; i < d / 2; ++i) {
    const float c = rot[2 * i], s = rot[2 * i + 1], x0 = x[2 * i], x1 = x[2 * i + 1];
    out[2 * i] = x0 * c - x1 * s;
    out[2 * i + 1] = x0 * s + x1 * c;
  }
}

// The four sums of the lanes of a, b, c, d.
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

inline float dot(const float* a, const float* b, int64_t d) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= d; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float s = hsum(acc);
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}

constexpr int64_t KEY_BLOCK = 32;  // keys (and values) per pass of a group's query heads: a few KiB, in L1

// out[0 .. 8 NV) += sum over keys j in [j0, j1) of p[j] * values[j, 0 .. 8 NV) (rows d apart),
// the sums held in NV registers over the whole block.
template <int NV>
inline void weighted_values(const float* p, const float* values, int64_t d, int64_t j0, int64_t j1, float* out) {
  __m256 acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = _mm256_loadu_ps(out + 8 * v);
  for (int64_t j = j0; j < j1; ++j) {
    const __m256 pj = _mm256_set1_ps(p[j]);
    for (int v = 0; v < NV; ++v) acc[v] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(values + j * d + 8 * v), acc[v]);
  }
  for (int v = 0; v < NV; ++v) _mm256_storeu_ps(out + 8 * v, acc[v]);
}

// Attention of the G query heads q [G, d] (rotated, scaled) that share one key/value head
// (keys, values [n, d]) into out [G, d]; p [G, n] is scratch. Each block of keys is read
// once for all G heads, so grouped-query attention reads the cache once per KV head.
void attend_group(const float* q, int64_t g_heads, const float* keys, const float* values, int64_t n, int64_t d,
                  float* p, float* out) {
  const int64_t d8 = d / 8 * 8;
  for (int64_t j0 = 0; j0 < n; j0 += KEY_BLOCK) {  // scores
    const int64_t j1 = std::min(n, j0 + KEY_BLOCK);
    for (int64_t g = 0; g < g_heads; ++g) {
      const float* qg = q + g * d;
      float* pg = p + g * n;
      int64_t j = j0;
      for (; j + 4 <= j1; j += 4) {
        const float* k0 = keys + j * d;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t i = 0; i < d8; i += 8) {
          const __m256 qv = _mm256_loadu_ps(qg + i);
          a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + i), a0);
          a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + d + i), a1);
          a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 2 * d + i), a2);
          a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 3 * d + i), a3);
        }
        _mm_storeu_ps(pg + j, hsum4(a0, a1, a2, a3));
        for (int64_t i = d8; i < d; ++i)
          for (int t = 0; t < 4; ++t) pg[j + t] += qg[i] * k0[t * d + i];
      }
      for (; j < j1; ++j) pg[j] = dot(qg, keys + j * d, d);
    }
  }
  std::vector<float> inv_total(g_heads);
  for (int64_t g = 0; g < g_heads; ++g) {  // softmax, normalised at the end
    float* pg = p + g * n;
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) mx = std::max(mx, pg[j]);
    const __m256 vmx = _mm256_set1_ps(mx);
    __m256 tot = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
      const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(pg + j), vmx));
      _mm256_storeu_ps(pg + j, e);
      tot = _mm256_add_ps(tot, e);
    }
    float total = hsum(tot);
    for (; j < n; ++j) total += (pg[j] = std::exp(pg[j] - mx));
    inv_total[g] = 1.f / total;
  }
  std::fill(out, out + g_heads * d, 0.f);
  for (int64_t j0 = 0; j0 < n; j0 += KEY_BLOCK) {  // weighted values, 64 dimensions (8 registers) at a time
    const int64_t j1 = std::min(n, j0 + KEY_BLOCK);
    for (int64_t g = 0; g < g_heads; ++g) {
      const float* pg = p + g * n;
      float* og = out + g * d;
      int64_t c = 0;
      for (; c + 64 <= d8; c += 64) weighted_values<8>(pg, values + c, d, j0, j1, og + c);
      switch ((d8 - c) / 8) {  // head sizes not a multiple of 64
        case 1: weighted_values<1>(pg, values + c, d, j0, j1, og + c); break;
        case 2: weighted_values<2>(pg, values + c, d, j0, j1, og + c); break;
        case 3: weighted_values<3>(pg, values + c, d, j0, j1, og + c); break;
        case 4: weighted_values<4>(pg, values + c, d, j0, j1, og + c); break;
        case 5: weighted_values<5>(pg, values + c, d, j0, j1, og + c); break;
        case 6: weighted_values<6>(pg, values + c, d, j0, j1, og + c); break;
        case 7: weighted_values<7>(pg, values + c, d, j0, j1, og + c); break;
      }
      for (int64_t i = d8; i < d; ++i)
        for (int64_t j = j0; j < j1; ++j) og[i] += pg[j] * values[j * d + i];
    }
  }
  for (int64_t g = 0; g < g_heads; ++g)
    for (int64_t i = 0; i < d; ++i) out[g * d + i] *= inv_total[g];
}

// A decode step's attention for one new token per sequence, in one call: rotate q [B, (1,) H, D]
// and k [B, (1,) Hkv, D] by rot (cos, sin of each pair's angle: complex [B, ..., D/2] or its
// float [..., 2] view), store k and v in the caches' `layer` (caches [L, R, Hkv, S, D]) at slot
// positions[b] of row rows[b] (default b), then attend from q to slots 0 .. positions[b] of
// that row (softmax, scale 1/sqrt(D)). Returns q's shape. Shapes are handled here, not in
// Python: each torch view costs microseconds, and this runs once a layer per token.
torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor rot,
                               torch::Tensor caches_k, torch::Tensor caches_v, int64_t layer,
                               c10::optional<torch::Tensor> rows_or_none, torch::Tensor positions) {
  for (const auto* t : {&q, &k, &v, &caches_k, &caches_v})
    TORCH_CHECK(t->dtype() == torch::kFloat32, "decode_attention: float32 tensors");
  TORCH_CHECK(rot.dtype() == torch::kFloat32 || rot.dtype() == torch::kComplexFloat, "decode_attention: float32 rotations");
  TORCH_CHECK(caches_k.dim() == 5 && caches_v.sizes() == caches_k.sizes() && caches_k.is_contiguous() &&
              caches_v.is_contiguous() && 0 <= layer && layer < caches_k.size(0),
              "decode_attention: contiguous caches [L,R,Hkv,S,D] and a layer among them");
  // the layer's caches [R, Hkv, S, D] by pointer: select() and arange() cost microseconds a layer
  const int64_t n_rows = caches_k.size(1), hkv = caches_k.size(2), s = caches_k.size(3);
  const int64_t b = q.size(0), d = q.size(-1);
  TORCH_CHECK(d > 0 && q.numel() % (b * d) == 0 && k.numel() == b * hkv * d && v.numel() == k.numel(),
              "decode_attention: q [B,(1,)H,D], k/v [B,(1,)Hkv,D]");
  const int64_t h = q.numel() / (b * d);
  const auto out_shape = q.sizes().vec();
  q = q.contiguous().view({b, h, d}); k = k.contiguous().view({b, hkv, d}); v = v.contiguous().view({b, hkv, d});
  rot = rot.contiguous();
  const int64_t rot_floats = rot.numel() * (rot.is_complex() ? 2 : 1);
  std::vector<int64_t> identity;
  torch::Tensor rows;
  if (rows_or_none.has_value()) {
    rows = rows_or_none->to(torch::kLong).contiguous();
  } else {
    for (int64_t i = 0; i < b; ++i) identity.push_back(i);
  }
  positions = positions.to(torch::kLong).contiguous();
  TORCH_CHECK(d % 2 == 0 && k.size(0) == b && k.size(2) == d && caches_k.size(4) == d && h % hkv == 0 &&
              rot_floats == b * d && (identity.size() == size_t(b) || rows.numel() == b) && positions.numel() == b,
              "decode_attention: shapes do not match");
  const int64_t *rp = rows.defined() ? rows.data_ptr<int64_t>() : identity.data(), *pp = positions.data_ptr<int64_t>();
  for (int64_t i = 0; i < b; ++i)
    TORCH_CHECK(0 <= rp[i] && rp[i] < n_rows && 0 <= pp[i] && pp[i] < s, "decode_attention: row or position out of range");
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const float* rtp = static_cast<const float*>(rot.data_ptr());  // complex64 is (cos, sin) float pairs
  const int64_t layer_floats = n_rows * hkv * s * d;
  float *kc = caches_k.data_ptr<float>() + layer * layer_floats, *vc = caches_v.data_ptr<float>() + layer * layer_floats;
  for (int64_t i = 0; i < b; ++i)
    for (int64_t g = 0; g < hkv; ++g) {
      const int64_t slot = ((rp[i] * hkv + g) * s + pp[i]) * d;
      rotate_pairs(kp + (i * hkv + g) * d, rtp + i * d, d, kc + slot);
      std::memcpy(vc + slot, vp + (i * hkv + g) * d, d * sizeof(float));
    }
  auto out = torch::empty_like(q);
  float* op = out.data_ptr<float>();
  const float scale = 1.f / std::sqrt(float(d));
  const int64_t group = h / hkv;
  int64_t keys = 0;  // the work, in key vectors read: below ~64k (short contexts) waking a thread costs more than it saves
  for (int64_t i = 0; i < b; ++i) keys += (pp[i] + 1) * h;
  const int64_t grain = keys < (1 << 16) ? b * hkv : 1;
  at::parallel_for(0, b * hkv, grain, [&](int64_t a, int64_t e) {
    std::vector<float> p(group * s), qr(group * d);
    for (int64_t task = a; task < e; ++task) {  // one (sequence, KV head) pair
      const int64_t bi = task / hkv, kvh = task % hkv;
      for (int64_t g = 0; g < group; ++g) {
        float* qg = qr.data() + g * d;
        rotate_pairs(qp + (bi * h + kvh * group + g) * d, rtp + bi * d, d, qg);
        for (int64_t i = 0; i < d; ++i) qg[i] *= scale;
      }
      const int64_t base = ((rp[bi] * hkv + kvh) * s) * d;
      attend_group(qr.data(), group, kc + base, vc + base, pp[bi] + 1, d, p.data(), op + (bi * h + kvh * group) * d);
    }
  });
  return out.view(out_shape);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // The kernels touch no Python objects: other threads run meanwhile (the tokenizer being read
  // while weights are repacked, the server's HTTP loop while a batch is decoded).
  const py::call_guard<py::gil_scoped_release> nogil;
  m.def("gemm_float", &gemm_float_rows, "x @ W^T with W in F32, F16 or BF16 (few rows of x)", nogil);
  m.def("dequant_16bit", &dequant_16bit, "decode rows of an F16 or BF16 weight to float32", nogil);
  m.def("pack", &pack, "stack GGML weights by rows and repack them 8 rows interleaved", nogil);
  m.def("unpack", &unpack, "the GGML bytes of a packed weight", nogil);
  m.def("dequant_packed", &dequant_packed, "decode rows of a packed weight to float32", nogil);
  m.def("gemm_packed", &gemm_packed, "x @ W^T with W packed, x rounded to int8 blocks", nogil);
  m.def("gemm_kquant", &gemm_kquant_rows, "x @ W^T with W a k-quant, Q2_K to Q6_K (few rows of x), x rounded to int8 terms", nogil);
  m.def("dequant_kquant", &dequant_kquant, "decode rows of a k-quant weight (Q2_K to Q6_K) to float32", nogil);
  m.def("rms_norm", &rms_norm, "RMSNorm of float32 rows", nogil);
  m.def("silu_mul", &silu_mul, "silu(gate) * up of side-by-side halves", nogil);
  m.def("decode_attention", &decode_attention, "rotate, cache and attend one new token per sequence", nogil);
  m.def("quantize_q8", [](torch::Tensor x, int64_t block) {  // for tests: the int8 blocks the kernels multiply
    TORCH_CHECK(block == 32 || block == 256, "block must be 32 (gemm_packed) or 256 (gemm_kquant)");
    TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() == 2 && x.size(1) % block == 0, "x must be float32 [M, K], K % block == 0");
    x = x.contiguous();
    auto q = torch::empty(x.sizes(), x.options().dtype(torch::kInt8));
    auto d = torch::empty({x.size(0), x.size(1) / block}, x.options());
    quantize_rows_q8(x.data_ptr<float>(), x.size(0), x.size(1), q.data_ptr<int8_t>(), d.data_ptr<float>(), block);
    return std::make_tuple(q, d);
  }, "int8 blocks and their scales, as gemm_packed (32) and gemm_kquant (256) round x", py::arg("x"), py::arg("block") = 32);
}
