// k-quants (Q2_K .. Q6_K) and IQ4_XS on the file's bytes: products in integers with a few
// rows of x rounded to int8, and runs of rows decoded to float32 for BLAS (described below).
#include "common.h"
#include "kernels.h"

namespace llamaherd {

namespace {

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
        } else {  // any number of rows, one at a time
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

}  // namespace

// x: float32 [..., K] (a few rows); w: a k-quant weight's bytes (N rows); x_terms:
// 1 to 3 int8 terms per row of x (see gemm_kquant_q8). Returns [..., N].
at::Tensor gemm_kquant_rows(at::Tensor x_in, at::Tensor w, int64_t type, int64_t n, int64_t x_terms) {
  auto [x, out_shape, m, k] = product_rows(x_in, n, x_terms);
  TORCH_CHECK(m <= MAX_M, "gemm_kquant takes at most ", MAX_M, " rows");
  check(w, type, n, k);
  auto y = at::empty(out_shape, x.options());
  switch (type) {
    case Q2_K: gemm_kquant_q8<Q2_K>(x.data_ptr<float>(), w.data_ptr<uint8_t>(), m, k, n, x_terms, y.data_ptr<float>()); break;
    case Q3_K: gemm_kquant_q8<Q3_K>(x.data_ptr<float>(), w.data_ptr<uint8_t>(), m, k, n, x_terms, y.data_ptr<float>()); break;
    case Q4_K: gemm_kquant_q8<Q4_K>(x.data_ptr<float>(), w.data_ptr<uint8_t>(), m, k, n, x_terms, y.data_ptr<float>()); break;
    case Q5_K: gemm_kquant_q8<Q5_K>(x.data_ptr<float>(), w.data_ptr<uint8_t>(), m, k, n, x_terms, y.data_ptr<float>()); break;
    case Q6_K: gemm_kquant_q8<Q6_K>(x.data_ptr<float>(), w.data_ptr<uint8_t>(), m, k, n, x_terms, y.data_ptr<float>()); break;
    case IQ4_XS: gemm_kquant_q8<IQ4_XS>(x.data_ptr<float>(), w.data_ptr<uint8_t>(), m, k, n, x_terms, y.data_ptr<float>()); break;
    default: TORCH_CHECK(false, "GGML type ", type, " is not a k-quant with a native kernel");
  }
  return y;
}

void dequant_kquant(at::Tensor w, int64_t type, int64_t n, int64_t k, int64_t r0, int64_t r1, at::Tensor out) {
  check(w, type, n, k);
  check_row_run(out, n, k, r0, r1);
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

}  // namespace llamaherd
