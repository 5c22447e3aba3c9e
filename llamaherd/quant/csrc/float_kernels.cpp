// F32, F16 and BF16 weights: products with a few rows of x, and runs of 16-bit rows decoded
// to float32 for BLAS (see common.h).
#include "common.h"
#include "kernels.h"

namespace llamaherd {

namespace {

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

// y[m, n] = sum_k x[m, k] * W[n, k] for m < M <= MAX_M, all n in [n0, n1), W in F32, F16 or BF16.
// A row of x sums into U vectors at once: a single chain of multiply-adds waits on the one
// before (4 cycles here), which held one row to 2 F16 values a cycle, 12.9 GB/s of weights a
// thread in L2, below DRAM's bandwidth (one thread, in L2, against one chain a row: F16 and BF16
// 2.8-3.3x faster for one row, 2.2x for two, 1.1x for four; F32 2.5x for one). Its inner loop is
// a dozen instructions: where it straddles a 64-byte line this Zen 3 runs it 1.5x slower
// (measured, 1.1 vs 1.65 ms for a 5632 x 2048 F16 product), hence the alignment.
template <int64_t T, int M>
__attribute__((optimize("align-loops=64"))) void gemm_float_tile(const float* x, const uint8_t* w, int64_t k, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  constexpr int B = T == F32 ? 4 : 2;  // bytes a value
  constexpr int U = M <= 2 ? 4 : (M <= 4 ? 2 : 1);  // vectors summed apart a row of x: M * U chains
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w + n * B * k;
    __m256 acc[M][U];
    for (int m = 0; m < M; ++m)
      for (int u = 0; u < U; ++u) acc[m][u] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 * U <= k; i += 8 * U) {
      if constexpr (B * 8 * U >= 64) {
        for (int off = 0; off < B * 8 * U; off += 64) prefetch_l2(row + B * i + PREFETCH_BYTES + off);
      } else if (i % (64 / B) == 0) {
        prefetch_l2(row + B * i + PREFETCH_BYTES);
      }
      for (int u = 0; u < U; ++u) {
        const __m256 wv = load8_float<T>(row + B * (i + 8 * u));
        for (int m = 0; m < M; ++m) acc[m][u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * k + i + 8 * u), acc[m][u]);
      }
    }
    for (; i < k; i += 8) {  // the last values, fewer than 8 * U
      const __m256 wv = load8_float<T>(row + B * i);
      for (int m = 0; m < M; ++m) acc[m][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * k + i), acc[m][0]);
    }
    for (int m = 0; m < M; ++m) {
      __m256 sum = acc[m][0];
      for (int u = 1; u < U; ++u) sum = _mm256_add_ps(sum, acc[m][u]);
      y[m * ldy + n] = hsum(sum);
    }
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

}  // namespace

// x: float32 [M, K]; w: an F32, F16 or BF16 weight's bytes (N rows of K values). Returns float32 [M, N].
at::Tensor gemm_float_rows(at::Tensor x, at::Tensor w, int64_t type, int64_t n) {
  TORCH_CHECK(x.dtype() == at::kFloat && x.dim() == 2, "x must be 2-D float32");
  TORCH_CHECK(type == F32 || type == F16 || type == BF16, "GGML type ", type, " is not F32, F16 or BF16");
  x = x.contiguous();
  const int64_t m = x.size(0), k = x.size(1);
  check(w, type, n, k);
  auto y = at::empty({m, n}, x.options());
  if (type == F32) gemm_float<F32>(x.data_ptr<float>(), w.data_ptr<uint8_t>(), m, k, n, y.data_ptr<float>());
  else if (type == F16) gemm_float<F16>(x.data_ptr<float>(), w.data_ptr<uint8_t>(), m, k, n, y.data_ptr<float>());
  else gemm_float<BF16>(x.data_ptr<float>(), w.data_ptr<uint8_t>(), m, k, n, y.data_ptr<float>());
  return y;
}

// Rows [r0, r1) of an N x K F16 or BF16 weight decoded into `out` (float32 [r1 - r0, K], contiguous).
void dequant_16bit(at::Tensor w, int64_t type, int64_t n, int64_t k, int64_t r0, int64_t r1, at::Tensor out) {
  TORCH_CHECK(type == F16 || type == BF16, "GGML type ", type, " is not F16 or BF16");
  check(w, type, n, k);
  check_row_run(out, n, k, r0, r1);
  if (type == F16) dequant_rows_16bit<F16>(w.data_ptr<uint8_t>(), k, r0, r1, out.data_ptr<float>());
  else dequant_rows_16bit<BF16>(w.data_ptr<uint8_t>(), k, r0, r1, out.data_ptr<float>());
}

}  // namespace llamaherd
