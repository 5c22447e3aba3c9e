// The native CPU kernels: matrix products straight on GGML weight bytes, AVX2 + FMA + F16C
// (the packed products on AVX-512 where the build has it: packed_layout.h Lanes16), and the
// small fused float32 ops of a decode step. One job a file:
//
//   * float_kernels.cpp: F32, F16, BF16: gemm(x, w) for a few rows of x: each weight row is
//     converted to float in registers and multiplied with every row of x; dequant() decodes
//     runs of rows to float32 for a BLAS matmul (prefill). Results equal "x @ W^T" up to float
//     summation order.
//   * kquant_kernels.cpp: IQ4_XS, and Q2_K .. Q6_K where they are not packed: on the file's
//     bytes, a 256-value super-block at a time: multiplied in integers with a few rows of x
//     rounded to int8 (gemm_kquant_q8), or runs of rows decoded to float32 for BLAS (prefill)
//     exactly as GGML decodes them.
//   * packed_layout.h, packed_kernels.cpp (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q8_0, and the entry
//     points), packed_kquant_kernels.cpp (Q2_K .. Q6_K): the loader repacks the weight into an
//     8-row interleaved layout (pack(), described there) and gemm_packed() multiplies it in
//     integers with x rounded to int8 blocks, for any number of rows of x. Results equal
//     "dequantize W, round x to its int8 blocks, then x @ W^T" up to float summation order.
//   * fused_ops.cpp: rms_norm, silu_mul, decode_attention and decode_block (a block's whole
//     decode step), each one call in place of several torch ops.
//   * bindings.cpp: the Python module; kernels.h declares the functions it binds.
//   * common.h (this file): what they share: GGML type ids and row sizes, float helpers, the
//     prefetch and threading constants, x rounded to int8 blocks, argument checks.
//
// All is in namespace llamaherd, the matrix kernels' internals in an anonymous namespace of
// their file (the packed layout's shared parts in llamaherd::packed). Functions defined here
// are inline or templates.
#pragma once

// ATen's own headers, not torch/extension.h: each kernel file compiles in ~8 s of headers
// instead of ~45 (measured); only bindings.cpp includes torch/extension.h.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cmath>
#include <cstring>
#include <array>
#include <vector>

namespace llamaherd {

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

constexpr int MAX_M = 8;  // rows of x handled together in one pass over the weights
// A single core's hardware prefetch leaves DRAM bandwidth unused when it streams weights:
// the packed and float kernels ask for bytes PREFETCH_BYTES ahead, into L2 (hint T1). Measured
// on a 2-core Intel Xeon VM, 2 threads, every layer of TinyLlama-shaped weights in turn (Q4_0
// 518 MiB; the VM reports a shared 480 MiB L3), one row of x, against 2 KiB (packed) and 1 KiB
// (float) into L1 (T0): Q4_0 19.5 -> 23.6 GB/s with int8 activations, 15.9 -> 19.7 with three
// terms, Q8_0 20.6 -> 26.2, F16 23.1 -> 28.2 (a 1 GiB read: 25 GB/s); decoding 1.2-1.35x
// faster. T1 at 6 and 8 KiB no better, at 2 KiB 2-6% worse.
constexpr int64_t PREFETCH_BYTES = 4096;
inline void prefetch_l2(const void* p) { _mm_prefetch((const char*)p, _MM_HINT_T1); }
// The k-quant kernel on the file's bytes (kquant_kernels.cpp) did better asking further ahead
// into L1 on a 2-core AMD EPYC (Q4_K_M decode 8% faster at 8 KiB than at 2 KiB, 16 KiB no
// better); not measured again since.
constexpr int64_t KQUANT_PREFETCH_BYTES = 8192;
constexpr int64_t PARALLEL_MIN_BYTES = 256 << 10;  // weight bytes (per x tile) worth a second thread

// IQ4_NL and IQ4_XS: each 4-bit value indexes these 16 levels (GGML's kvalues_iq4nl): d * level
inline constexpr int8_t IQ4_LEVELS[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
inline __m256i iq4_levels(__m256i nibbles) {
  const __m128i table = _mm_loadu_si128((const __m128i*)IQ4_LEVELS);
  return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(table), nibbles);
}
#ifdef __AVX512BW__
inline __m512i iq4_levels(__m512i nibbles) {
  return _mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)IQ4_LEVELS)), nibbles);
}
#endif

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

// --- int8-rounded activations -----------------------------------------------------------

// max|x| / 127 over `block` values: the scale that rounds them to int8.
inline float block_scale(const float* xb, int64_t block) {
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  __m256 amax = _mm256_setzero_ps();
  for (int64_t j = 0; j < block; j += 8) amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_bit, _mm256_loadu_ps(xb + j)));
  __m128 mx = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
  mx = _mm_max_ps(mx, _mm_movehl_ps(mx, mx));
  mx = _mm_max_ss(mx, _mm_movehdup_ps(mx));
  return _mm_cvtss_f32(mx) / 127.f;
}

// 32 values v * inv rounded half to even (as torch.round) to int8 at q; returns them as int32.
inline void round_to_int8(const __m256 v[4], __m256 inv, int8_t* q, __m256i r[4]) {
  for (int j = 0; j < 4; ++j) r[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[j], inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  // pack 4 x 8 int32 -> 32 int8 in order (packs work within 128-bit lanes: fix the order after)
  const __m256i p8 = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
  _mm256_storeu_si256((__m256i*)q, _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
  return _mm_cvtsi128_si32(s);
}

// std::vector's allocator without value-initialization, for buffers the kernels fill whole
// (zeroing them first was a memset a product: 7% of a batch-8 step's small products).
template <class T>
struct NoInit : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = NoInit<U>;
  };
  NoInit() = default;
  template <class U>
  NoInit(const NoInit<U>&) noexcept {}
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};
template <class T>
using Filled = std::vector<T, NoInit<T>>;  // a buffer that is written before it is read

// x rounded to int8 blocks: q [m, k], scale d [m, k/block] and sums s [m, k/32] per 32 values.
struct Q8Act {
  Filled<int8_t> q;
  Filled<float> d;
  Filled<int32_t> s;
};

// A term's scale is the first's over 2^(TERM_SHIFT * t): a power of two, so the packed kernels
// add a row's terms in integers before one conversion to float (packed_kernels.cpp).
constexpr int TERM_SHIFT = 7;
constexpr float TERM_SCALES[3] = {1.f, 1.f / (1 << TERM_SHIFT), 1.f / (1 << 2 * TERM_SHIFT)};  // 2^(-TERM_SHIFT t)

// Row i of x as `terms` rows of int8 blocks (rows terms*i ..). The first rounds x with
// d = max|x| / 127 per block; term t rounds what the ones before missed with d / 128^t,
// which leaves at most half its step, so each next term's values lie in [-64, 64].
// x = d * (q0 + q1 / 128 + q2 / 128^2) + e with |e| <= d / 2 / 128^(terms-1): three terms
// carry x to d * 2^-15, about 2^-22 of each block's largest value (float32's own precision).
// Blocks of 32 values for the packed kernels; of 256 (one scale per k-quant super-block, as
// GGML's Q8_K) for the k-quant ones.
inline Q8Act quantize_act(const float* x, int64_t m, int64_t k, int64_t terms, int64_t block = 32) {
  const int64_t nb = k / 32, nd = k / block, rows = m * terms;
  Q8Act a{Filled<int8_t>(rows * k), Filled<float>(rows * nd), Filled<int32_t>(rows * nb)};
  // plain pointers: through the vectors, each int8 store (which may alias anything) made the
  // compiler load their data pointers again
  int8_t* const q = a.q.data();
  float* const scales = a.d.data();
  int32_t* const sums = a.s.data();
  // rows split between threads where there is enough of them (8 rows of 5632 values in three
  // terms: 64 us on one thread, a decode step's largest overhead)
  const int64_t grain = std::max<int64_t>(1, (1 << 15) / (k * terms));
  at::parallel_for(0, m, grain, [=](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* src = x + r * k;
      for (int64_t i = 0; i < nd; ++i) {
        const float d = block_scale(src + block * i, block);
        // times 2^(-TERM_SHIFT t), exactly as ldexp would round it, without a libm call a term
        for (int64_t t = 0; t < terms; ++t) scales[(r * terms + t) * nd + i] = d * TERM_SCALES[t];
      }
      for (int64_t c = 0; c < nb; ++c) {  // 32 values at a time, each term rounding the rest
#ifdef __AVX512F__
        // the same steps 16 values a register: the same integers (saturated to int8 alike)
        __m512 rest[2] = {_mm512_loadu_ps(src + 32 * c), _mm512_loadu_ps(src + 32 * c + 16)};
        for (int64_t t = 0; t < terms; ++t) {
          const int64_t row = r * terms + t;
          const float step = scales[row * nd + 32 * c / block], inv = 1.f / step;  // step tiny: inf, the term 0
          const __m512 scale = _mm512_set1_ps(step > 0.f && std::isfinite(inv) ? inv : 0.f);
          __m512i qi[2];
          for (int j = 0; j < 2; ++j) {
            qi[j] = _mm512_cvt_roundps_epi32(_mm512_mul_ps(rest[j], scale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            _mm_storeu_si128((__m128i*)(q + row * k + 32 * c + 16 * j), _mm512_cvtsepi32_epi8(qi[j]));
          }
          sums[row * nb + c] = _mm512_reduce_add_epi32(_mm512_add_epi32(qi[0], qi[1]));
          for (int j = 0; j < 2; ++j) rest[j] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(qi[j]), _mm512_set1_ps(step), rest[j]);
        }
#else
        __m256 rest[4];
        __m256i qi[4];
        for (int j = 0; j < 4; ++j) rest[j] = _mm256_loadu_ps(src + 32 * c + 8 * j);
        for (int64_t t = 0; t < terms; ++t) {
          const int64_t row = r * terms + t;
          const float step = scales[row * nd + 32 * c / block], inv = 1.f / step;  // step tiny: inf, the term 0
          round_to_int8(rest, _mm256_set1_ps(step > 0.f && std::isfinite(inv) ? inv : 0.f), q + row * k + 32 * c, qi);
          sums[row * nb + c] = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3])));
          for (int j = 0; j < 4; ++j) rest[j] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(qi[j]), _mm256_set1_ps(step), rest[j]);
        }
#endif
      }
    }
  });
  return a;
}

inline void check(const at::Tensor& w, int64_t type, int64_t n, int64_t k) {
  TORCH_CHECK(w.dtype() == at::kByte && w.is_contiguous() && w.dim() == 1, "w must be contiguous 1-D uint8");
  const int64_t block = type == F32 || type == F16 || type == BF16 ? 8 : ((type >= Q2_K && type <= Q6_K) || type == IQ4_XS ? 256 : 32);  // floats: one vector
  TORCH_CHECK(k % block == 0, "row length must be a multiple of ", block);
  TORCH_CHECK(w.numel() == n * row_bytes(type, k), "w has ", w.numel(), " bytes, expected ", n * row_bytes(type, k));
}

// Decoding rows [r0, r1) of an n-row weight into out: float32, contiguous, room for them.
inline void check_row_run(const at::Tensor& out, int64_t n, int64_t k, int64_t r0, int64_t r1) {
  TORCH_CHECK(0 <= r0 && r0 <= r1 && r1 <= n, "rows [", r0, ", ", r1, ") are not within the weight's ", n);
  TORCH_CHECK(out.dtype() == at::kFloat && out.is_contiguous() && out.numel() >= (r1 - r0) * k,
              "out must be contiguous float32 with room for ", r1 - r0, " rows of ", k);
}

// The integer products' x (float32 [..., K], any leading dimensions) as M contiguous rows of K,
// checked with x_terms, and the shape of their result [..., N]. No view or copy where x is
// contiguous already (a decode step's case: each ATen call costs a microsecond or more).
struct ProductRows {
  at::Tensor x;
  std::vector<int64_t> out_shape;
  int64_t m, k;
};

inline ProductRows product_rows(at::Tensor x, int64_t n, int64_t x_terms) {
  TORCH_CHECK(x.dtype() == at::kFloat && x.dim() >= 1, "x must be float32 [..., K]");
  TORCH_CHECK(1 <= x_terms && x_terms <= 3, "x_terms must be 1, 2 or 3");
  auto out_shape = x.sizes().vec();
  const int64_t k = out_shape.back();
  TORCH_CHECK(k > 0, "x must have K > 0 values a row");
  out_shape.back() = n;
  if (!x.is_contiguous()) x = x.contiguous();
  return {x, out_shape, x.numel() / k, k};
}

}  // namespace llamaherd
