// Matrix products straight on GGML block bytes (F16, Q8_0, Q4_0, Q4_1), AVX2 + FMA + F16C.
//
// The weights stay in the file's layout (a memory map): a row of K values is K/32 blocks.
// Activations stay float32, so results equal "dequantize the weight, then x @ W^T" up to
// the order of float additions:
//   * gemm(x, w) for a few rows of x (decode): each weight block is decoded into registers
//     and multiplied with every row of x while it is hot;
//   * dequant(w, rows) decodes a run of weight rows into float32 for a BLAS matmul (prefill).
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
}
