// Matrix products straight on GGML block bytes (F16, Q8_0, Q4_0, Q4_1), AVX2 + FMA + F16C.
//
// The weights stay in the file's layout (a memory map): a row of K values is K/32 blocks.
// Activations stay float32, so results equal "dequantize the weight, then x @ W^T" up to
// the order of float additions:
//   * gemm(x, w) for a few rows of x (decode): each weight block is decoded into registers
//     and multiplied with every row of x while it is hot;
//   * dequant(w, rows) decodes a run of weight rows into float32 for a BLAS matmul (prefill).
// Q4_0 with a few rows of x is the exception (gemm_q4_0_q8): like llama.cpp, each 32-value
// block of x is quantized to int8 with its own scale (max|x| / 127) and multiplied with the
// weight's 4-bit values in integers (_mm256_maddubs_epi16), so results equal
// "dequantize W, round x to its int8 blocks, then x @ W^T" up to the order of additions.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cstring>
#include <vector>

namespace {

enum : int64_t { F16 = 1, Q4_0 = 2, Q4_1 = 3, Q8_0 = 8 };

inline int64_t row_bytes(int64_t type, int64_t k) {
  switch (type) {
    case F16: return k * 2;
    case Q4_0: return k / 32 * 18;
    case Q4_1: return k / 32 * 20;
    case Q8_0: return k / 32 * 34;
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

// One 32-value block as four vectors of 8 floats (before the block's scale and offset).
struct Block {
  __m256 v[4];
  float d, m;  // value = d * q + m
};

inline void i8x32_to_ps(__m128i lo16, __m128i hi16, __m256* v) {
  v[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo16));
  v[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo16, 8)));
  v[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi16));
  v[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi16, 8)));
}

template <int64_t T>
inline void load_block(const uint8_t* b, Block& out) {
  if constexpr (T == Q8_0) {
    out.d = half(b);
    out.m = 0.f;
    i8x32_to_ps(_mm_loadu_si128((const __m128i*)(b + 2)), _mm_loadu_si128((const __m128i*)(b + 18)), out.v);
  } else if constexpr (T == Q4_0 || T == Q4_1) {
    const uint8_t* qs = b + (T == Q4_0 ? 2 : 4);
    __m128i raw = _mm_loadu_si128((const __m128i*)qs);
    __m128i mask = _mm_set1_epi8(0x0F);
    __m128i lo = _mm_and_si128(raw, mask);                     // values 0..15 of the block
    __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);  // values 16..31
    if constexpr (T == Q4_0) {                                  // q - 8, exact in int8
      lo = _mm_sub_epi8(lo, _mm_set1_epi8(8));
      hi = _mm_sub_epi8(hi, _mm_set1_epi8(8));
    }
    i8x32_to_ps(lo, hi, out.v);
    out.d = half(b);
    out.m = T == Q4_1 ? half(b + 2) : 0.f;
  }
}

template <int64_t T>
inline void dequant_row(const uint8_t* row, int64_t k, float* out) {
  if constexpr (T == F16) {
    for (int64_t i = 0; i < k; i += 8)
      _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(row + 2 * i))));
  } else {
    const int64_t bb = row_bytes(T, 32);
    Block blk;
    for (int64_t b = 0; b < k / 32; ++b) {
      load_block<T>(row + b * bb, blk);
      __m256 d = _mm256_set1_ps(blk.d), m = _mm256_set1_ps(blk.m);
      for (int j = 0; j < 4; ++j) _mm256_storeu_ps(out + 32 * b + 8 * j, _mm256_fmadd_ps(blk.v[j], d, m));
    }
  }
}

// out[r, :] for rows [r0, r1) of w decoded to float32.
template <int64_t T>
void dequant_rows(const uint8_t* w, int64_t k, int64_t r0, int64_t r1, float* out) {
  const int64_t rb = row_bytes(T, k);
  at::parallel_for(r0, r1, 16, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; ++r) dequant_row<T>(w + r * rb, k, out + (r - r0) * k);
  });
}

constexpr int MAX_M = 8;  // rows of x handled together in one pass over the weights

// y[m, n] = sum_k x[m, k] * W[n, k] for m < M <= MAX_M, all n in [n0, n1).
template <int64_t T, int M>
void gemm_tile(const float* x, const float* xsum, const uint8_t* w, int64_t k, int64_t n0, int64_t n1,
               float* y, int64_t ldy) {
  const int64_t rb = row_bytes(T, k);
  const int64_t nb = k / 32;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w + n * rb;
    __m256 acc[M];
    float offs[M];
    for (int i = 0; i < M; ++i) { acc[i] = _mm256_setzero_ps(); offs[i] = 0.f; }
    if constexpr (T == F16) {
      for (int64_t i = 0; i < k; i += 8) {
        __m256 wv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(row + 2 * i)));
        for (int m = 0; m < M; ++m) acc[m] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * k + i), acc[m]);
      }
    } else {
      const int64_t bb = row_bytes(T, 32);
      Block blk;
      for (int64_t b = 0; b < nb; ++b) {
        load_block<T>(row + b * bb, blk);
        const __m256 d = _mm256_set1_ps(blk.d);
        for (int m = 0; m < M; ++m) {
          const float* xb = x + m * k + 32 * b;
          __m256 s = _mm256_mul_ps(blk.v[0], _mm256_loadu_ps(xb));
          s = _mm256_fmadd_ps(blk.v[1], _mm256_loadu_ps(xb + 8), s);
          s = _mm256_fmadd_ps(blk.v[2], _mm256_loadu_ps(xb + 16), s);
          s = _mm256_fmadd_ps(blk.v[3], _mm256_loadu_ps(xb + 24), s);
          acc[m] = _mm256_fmadd_ps(d, s, acc[m]);
          if constexpr (T == Q4_1) offs[m] += blk.m * xsum[m * nb + b];
        }
      }
    }
    for (int m = 0; m < M; ++m) y[m * ldy + n] = hsum(acc[m]) + offs[m];
  }
}

template <int64_t T>
void gemm_type(const float* x, const float* xsum, const uint8_t* w, int64_t m, int64_t k, int64_t n, float* y) {
  at::parallel_for(0, n, 32, [&](int64_t n0, int64_t n1) {
    for (int64_t m0 = 0; m0 < m; m0 += MAX_M) {
      const float* xm = x + m0 * k;
      const float* sm = xsum + m0 * (k / 32);
      float* ym = y + m0 * n;
      switch (std::min<int64_t>(MAX_M, m - m0)) {
        case 1: gemm_tile<T, 1>(xm, sm, w, k, n0, n1, ym, n); break;
        case 2: gemm_tile<T, 2>(xm, sm, w, k, n0, n1, ym, n); break;
        case 3: gemm_tile<T, 3>(xm, sm, w, k, n0, n1, ym, n); break;
        case 4: gemm_tile<T, 4>(xm, sm, w, k, n0, n1, ym, n); break;
        case 5: gemm_tile<T, 5>(xm, sm, w, k, n0, n1, ym, n); break;
        case 6: gemm_tile<T, 6>(xm, sm, w, k, n0, n1, ym, n); break;
        case 7: gemm_tile<T, 7>(xm, sm, w, k, n0, n1, ym, n); break;
        default: gemm_tile<T, 8>(xm, sm, w, k, n0, n1, ym, n); break;
      }
    }
  });
}

// --- Q4_0 weights x int8-quantized activations ---------------------------------------

// x [m, k] -> int8 values q [m, k] and one float scale per 32-block d [m, k/32]: x ~ d * q.
void quantize_rows_q8(const float* x, int64_t m, int64_t k, int8_t* q, float* d) {
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  for (int64_t i = 0; i < m * k / 32; ++i) {
    const float* xb = x + 32 * i;
    __m256 v[4], amax = _mm256_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      v[j] = _mm256_loadu_ps(xb + 8 * j);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_bit, v[j]));
    }
    __m128 mx = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    mx = _mm_max_ps(mx, _mm_movehl_ps(mx, mx));
    mx = _mm_max_ss(mx, _mm_movehdup_ps(mx));
    const float scale = _mm_cvtss_f32(mx) / 127.f;
    d[i] = scale;
    const __m256 inv = _mm256_set1_ps(scale > 0.f ? 1.f / scale : 0.f);
    __m256i r[4];
    for (int j = 0; j < 4; ++j)  // round half to even, as torch.round does
      r[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[j], inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    // pack 4 x 8 int32 -> 32 int8 in order (packs work within 128-bit lanes: fix the order after)
    __m256i p16a = _mm256_packs_epi32(r[0], r[1]), p16b = _mm256_packs_epi32(r[2], r[3]);
    __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i*)(q + 32 * i), p8);
  }
}

// The activation blocks as the Q4_0 kernel reads them, for rows m0 .. m0 + MAX_M - 1:
// block b of row m is q[m][32b ..] (int8), and per block the scales of all rows side by side,
// dT[b][m] = d, and offT[b][m] = -8 * d * sum(q of the block) (the "- 8" of Q4_0's values).
struct Q8Rows {
  const int8_t* q;
  const float* dT;    // [nb][MAX_M]
  const float* offT;  // [nb][MAX_M]
};

inline __m256i q4_0_nibbles(const uint8_t* b) {  // the 32 unsigned values q (0..15) of a Q4_0 block, in order
  __m128i raw = _mm_loadu_si128((const __m128i*)(b + 2));
  __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

// y[m, n] for m < M: sum over blocks of dw * dx * (sum q_w * q_x) + dw * offT, with q_w unsigned
// (maddubs: u8 x s8, pairs summed to int16: |.| <= 2 * 15 * 127, no saturation).
template <int M>
void gemm_q4_0_q8_tile(Q8Rows x, const uint8_t* w, int64_t k, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  const int64_t nb = k / 32, rb = nb * 18;
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w + n * rb;
    __m256 acc[M];
    __m256 off = _mm256_setzero_ps();  // lane m: the offset term of row m
    for (int i = 0; i < M; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + 18 * b;
      const __m256i wq = q4_0_nibbles(blk);
      const __m256 dw = _mm256_set1_ps(half(blk));
      alignas(32) float s[MAX_M];
      _mm256_store_ps(s, _mm256_mul_ps(dw, _mm256_loadu_ps(x.dT + MAX_M * b)));
      off = _mm256_fmadd_ps(dw, _mm256_loadu_ps(x.offT + MAX_M * b), off);
      for (int m = 0; m < M; ++m) {
        const __m256i xv = _mm256_loadu_si256((const __m256i*)(x.q + m * k + 32 * b));
        const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(wq, xv), ones);
        acc[m] = _mm256_fmadd_ps(_mm256_broadcast_ss(s + m), _mm256_cvtepi32_ps(p), acc[m]);
      }
    }
    alignas(32) float o[MAX_M];
    _mm256_store_ps(o, off);
    for (int m = 0; m < M; ++m) y[m * ldy + n] = hsum(acc[m]) + o[m];
  }
}

// One row of x (plain decode): fewer instructions per block than the tile above, two blocks
// a step on two accumulators, and the "- 8" offset summed as one scalar per weight row.
void gemm_q4_0_q8_row(Q8Rows x, const uint8_t* w, int64_t k, int64_t n0, int64_t n1, float* y) {
  const int64_t nb = k / 32, rb = nb * 18;
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w + n * rb;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float off = 0.f;
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
      const uint8_t* b0 = row + 18 * b;
      const float dw0 = half(b0), dw1 = half(b0 + 18);
      const __m256i p0 = _mm256_madd_epi16(
          _mm256_maddubs_epi16(q4_0_nibbles(b0), _mm256_loadu_si256((const __m256i*)(x.q + 32 * b))), ones);
      const __m256i p1 = _mm256_madd_epi16(
          _mm256_maddubs_epi16(q4_0_nibbles(b0 + 18), _mm256_loadu_si256((const __m256i*)(x.q + 32 * b + 32))), ones);
      acc0 = _mm256_fmadd_ps(_mm256_set1_ps(dw0 * x.dT[MAX_M * b]), _mm256_cvtepi32_ps(p0), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_set1_ps(dw1 * x.dT[MAX_M * (b + 1)]), _mm256_cvtepi32_ps(p1), acc1);
      off += dw0 * x.offT[MAX_M * b] + dw1 * x.offT[MAX_M * (b + 1)];
    }
    for (; b < nb; ++b) {
      const uint8_t* b0 = row + 18 * b;
      const float dw0 = half(b0);
      const __m256i p0 = _mm256_madd_epi16(
          _mm256_maddubs_epi16(q4_0_nibbles(b0), _mm256_loadu_si256((const __m256i*)(x.q + 32 * b))), ones);
      acc0 = _mm256_fmadd_ps(_mm256_set1_ps(dw0 * x.dT[MAX_M * b]), _mm256_cvtepi32_ps(p0), acc0);
      off += dw0 * x.offT[MAX_M * b];
    }
    y[n] = hsum(_mm256_add_ps(acc0, acc1)) + off;
  }
}

void gemm_q4_0_q8(const float* x, const uint8_t* w, int64_t m, int64_t k, int64_t n, float* y) {
  const int64_t nb = k / 32;
  std::vector<int8_t> q(m * k);
  std::vector<float> d(m * nb);
  quantize_rows_q8(x, m, k, q.data(), d.data());
  const int64_t tiles = (m + MAX_M - 1) / MAX_M;
  std::vector<float> dT(tiles * nb * MAX_M, 0.f), offT(tiles * nb * MAX_M, 0.f);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t b = 0; b < nb; ++b) {
      int sum = 0;
      for (int j = 0; j < 32; ++j) sum += q[r * k + 32 * b + j];
      const int64_t at = (r / MAX_M * nb + b) * MAX_M + r % MAX_M;
      dT[at] = d[r * nb + b];
      offT[at] = -8.f * d[r * nb + b] * float(sum);
    }
  at::parallel_for(0, n, 32, [&](int64_t n0, int64_t n1) {
    for (int64_t m0 = 0; m0 < m; m0 += MAX_M) {
      const int64_t t = m0 / MAX_M;
      Q8Rows xs{q.data() + m0 * k, dT.data() + t * nb * MAX_M, offT.data() + t * nb * MAX_M};
      float* ym = y + m0 * n;
      switch (std::min<int64_t>(MAX_M, m - m0)) {
        case 1: gemm_q4_0_q8_row(xs, w, k, n0, n1, ym); break;
        case 2: gemm_q4_0_q8_tile<2>(xs, w, k, n0, n1, ym, n); break;
        case 3: gemm_q4_0_q8_tile<3>(xs, w, k, n0, n1, ym, n); break;
        case 4: gemm_q4_0_q8_tile<4>(xs, w, k, n0, n1, ym, n); break;
        case 5: gemm_q4_0_q8_tile<5>(xs, w, k, n0, n1, ym, n); break;
        case 6: gemm_q4_0_q8_tile<6>(xs, w, k, n0, n1, ym, n); break;
        case 7: gemm_q4_0_q8_tile<7>(xs, w, k, n0, n1, ym, n); break;
        default: gemm_q4_0_q8_tile<8>(xs, w, k, n0, n1, ym, n); break;
      }
    }
  });
}

void check(const torch::Tensor& w, int64_t type, int64_t n, int64_t k) {
  TORCH_CHECK(w.dtype() == torch::kUInt8 && w.is_contiguous() && w.dim() == 1, "w must be contiguous 1-D uint8");
  TORCH_CHECK(k % 32 == 0, "row length must be a multiple of 32");
  TORCH_CHECK(w.numel() == n * row_bytes(type, k), "w has ", w.numel(), " bytes, expected ", n * row_bytes(type, k));
}

}  // namespace

// x: float32 [M, K] contiguous; w: the weight's GGML bytes (N rows of K values). Returns float32 [M, N].
torch::Tensor gemm(torch::Tensor x, torch::Tensor w, int64_t type, int64_t n) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() == 2, "x must be 2-D float32");
  x = x.contiguous();
  const int64_t m = x.size(0), k = x.size(1);
  check(w, type, n, k);
  auto y = torch::empty({m, n}, x.options());
  if (type == Q4_0) {  // integer products on int8-quantized activations
    gemm_q4_0_q8(x.data_ptr<float>(), w.data_ptr<uint8_t>(), m, k, n, y.data_ptr<float>());
    return y;
  }
  torch::Tensor xsum;
  if (type == Q4_1) xsum = x.view({m, k / 32, 32}).sum(-1).contiguous();
  else xsum = torch::empty({0}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* sp = xsum.data_ptr<float>();
  const uint8_t* wp = w.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
  switch (type) {
    case F16: gemm_type<F16>(xp, sp, wp, m, k, n, yp); break;
    case Q4_0: gemm_type<Q4_0>(xp, sp, wp, m, k, n, yp); break;
    case Q4_1: gemm_type<Q4_1>(xp, sp, wp, m, k, n, yp); break;
    case Q8_0: gemm_type<Q8_0>(xp, sp, wp, m, k, n, yp); break;
    default: TORCH_CHECK(false, "unsupported GGML type ", type);
  }
  return y;
}

// Rows [r0, r1) of the N x K weight decoded into `out` (float32 [r1 - r0, K], contiguous).
void dequant(torch::Tensor w, int64_t type, int64_t n, int64_t k, int64_t r0, int64_t r1, torch::Tensor out) {
  check(w, type, n, k);
  TORCH_CHECK(0 <= r0 && r0 <= r1 && r1 <= n, "bad row range");
  TORCH_CHECK(out.dtype() == torch::kFloat32 && out.is_contiguous() && out.numel() >= (r1 - r0) * k, "bad output");
  const uint8_t* wp = w.data_ptr<uint8_t>();
  float* op = out.data_ptr<float>();
  switch (type) {
    case F16: dequant_rows<F16>(wp, k, r0, r1, op); break;
    case Q4_0: dequant_rows<Q4_0>(wp, k, r0, r1, op); break;
    case Q4_1: dequant_rows<Q4_1>(wp, k, r0, r1, op); break;
    case Q8_0: dequant_rows<Q8_0>(wp, k, r0, r1, op); break;
    default: TORCH_CHECK(false, "unsupported GGML type ", type);
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gemm", &gemm, "x @ W^T with W in GGML blocks");
  m.def("dequant", &dequant, "decode rows of W in GGML blocks to float32");
  m.def("quantize_q8", [](torch::Tensor x) {  // for tests: the int8 blocks gemm uses for Q4_0
    TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() == 2 && x.size(1) % 32 == 0, "x must be float32 [M, K], K % 32 == 0");
    x = x.contiguous();
    auto q = torch::empty(x.sizes(), x.options().dtype(torch::kInt8));
    auto d = torch::empty({x.size(0), x.size(1) / 32}, x.options());
    quantize_rows_q8(x.data_ptr<float>(), x.size(0), x.size(1), q.data_ptr<int8_t>(), d.data_ptr<float>());
    return std::make_tuple(q, d);
  }, "int8 blocks of 32 and their scales, as gemm quantizes x for Q4_0 weights");
}
