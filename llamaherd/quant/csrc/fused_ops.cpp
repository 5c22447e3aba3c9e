// rms_norm, silu_mul and decode_attention: small fused float32 ops of a decode step.
#include <algorithm>

#include "common.h"
#include "kernels.h"

namespace llamaherd {

// ---- Small fused float32 ops of a decode step -----------------------------------------
// Each replaces several torch ops whose dispatch costs (microseconds each, hundreds per
// token) rival the matrix products of a small model. Row-parallel, same math as torch.

namespace {  // helpers, private to this file

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

}  // namespace

// x [..., D] -> x / sqrt(mean(x^2) + eps) * w
at::Tensor rms_norm(at::Tensor x, at::Tensor w, double eps) {
  TORCH_CHECK(x.dtype() == at::kFloat && w.dtype() == at::kFloat && x.dim() >= 1 && w.dim() == 1 &&
              x.size(-1) == w.size(0), "rms_norm: x float32 [..., D], w float32 [D]");
  if (!x.is_contiguous()) x = x.contiguous();  // is_contiguous is a field: no ATen call
  if (!w.is_contiguous()) w = w.contiguous();
  const int64_t d = x.size(-1), m = x.numel() / std::max<int64_t>(d, 1);
  auto y = at::empty_like(x);
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

// silu(gate) * up = gate / (1 + e^-gate) * up, for gate and up float32 [..., H]; without up, gate
// holds both side by side ([..., 2H], a fused w1/w3's output). No ATen calls on the decode path
// (contiguous input): each costs microseconds, hundreds of them a token.
at::Tensor silu_mul(at::Tensor gate, c10::optional<at::Tensor> up_or_none) {
  TORCH_CHECK(gate.dtype() == at::kFloat && gate.dim() >= 1, "silu_mul: gate must be float32 [..., H]");
  if (!gate.is_contiguous()) gate = gate.contiguous();
  auto shape = gate.sizes().vec();
  const float* gsrc = gate.data_ptr<float>();
  const float* usrc;
  int64_t h, stride;  // values a row, floats between rows of gate (and of up)
  at::Tensor up;
  if (!up_or_none) {
    TORCH_CHECK(shape.back() % 2 == 0, "silu_mul: gate and up side by side need [..., 2H]");
    h = shape.back() / 2, stride = 2 * h, usrc = gsrc + h;
    shape.back() = h;
  } else {
    up = up_or_none->is_contiguous() ? *up_or_none : up_or_none->contiguous();
    TORCH_CHECK(up.dtype() == at::kFloat && up.sizes() == gate.sizes(), "silu_mul: up must be float32 of gate's shape");
    h = stride = shape.back(), usrc = up.data_ptr<float>();
  }
  auto y = at::empty(shape, gate.options());
  if (y.numel() == 0) return y;
  const int64_t m = y.numel() / h;
  float* dst = y.data_ptr<float>();
  const __m256 one = _mm256_set1_ps(1.f), sign_bit = _mm256_set1_ps(-0.0f);
  at::parallel_for(0, m, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(h, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *g = gsrc + r * stride, *u = usrc + r * stride;
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

namespace {

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

#ifdef __AVX512F__
// The same, 16 floats a register (out[0 .. 16 NV)), keys two at a time into two sets of sums:
// half the instructions and twice the multiply-add chains in flight. With the scores' wider
// loop below, 22 layers' attention of 8 rows at 1900 tokens 53.9 -> 48 ms (the vector max
// of the scores then 48 -> 42.5).
template <int NV>
inline void weighted_values16(const float* p, const float* values, int64_t d, int64_t j0, int64_t j1, float* out) {
  __m512 acc[NV], odd[NV];
  for (int v = 0; v < NV; ++v) acc[v] = _mm512_loadu_ps(out + 16 * v), odd[v] = _mm512_setzero_ps();
  int64_t j = j0;
  for (; j + 2 <= j1; j += 2) {
    const __m512 p0 = _mm512_set1_ps(p[j]), p1 = _mm512_set1_ps(p[j + 1]);
    for (int v = 0; v < NV; ++v) {
      acc[v] = _mm512_fmadd_ps(p0, _mm512_loadu_ps(values + j * d + 16 * v), acc[v]);
      odd[v] = _mm512_fmadd_ps(p1, _mm512_loadu_ps(values + (j + 1) * d + 16 * v), odd[v]);
    }
  }
  if (j < j1)
    for (int v = 0; v < NV; ++v) acc[v] = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), _mm512_loadu_ps(values + j * d + 16 * v), acc[v]);
  for (int v = 0; v < NV; ++v) _mm512_storeu_ps(out + 16 * v, _mm512_add_ps(acc[v], odd[v]));
}

inline __m256 fold(__m512 a) {  // the two halves added (extractf64x4: AVX-512F, not DQ)
  return _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
}
#endif

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
#ifdef __AVX512F__
      if (d % 16 == 0)
        for (; j + 8 <= j1; j += 8) {  // 8 keys: 8 chains of multiply-adds in flight, not 4
          const float* k0 = keys + j * d;
          __m512 a[8];
          for (int t = 0; t < 8; ++t) a[t] = _mm512_setzero_ps();
          for (int64_t i = 0; i < d; i += 16) {
            const __m512 qv = _mm512_loadu_ps(qg + i);
            for (int t = 0; t < 8; ++t) a[t] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k0 + t * d + i), a[t]);
          }
          _mm_storeu_ps(pg + j, hsum4(fold(a[0]), fold(a[1]), fold(a[2]), fold(a[3])));
          _mm_storeu_ps(pg + j + 4, hsum4(fold(a[4]), fold(a[5]), fold(a[6]), fold(a[7])));
        }
#endif
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
    // the largest score: 8 lanes at a time (a scalar max waits on the one before: 4 cycles a key)
    __m256 lanes = _mm256_set1_ps(-INFINITY);
    int64_t m = 0;
    for (; m + 8 <= n; m += 8) lanes = _mm256_max_ps(lanes, _mm256_loadu_ps(pg + m));
    alignas(32) float lane[8];
    _mm256_store_ps(lane, lanes);
    float mx = *std::max_element(lane, lane + 8);
    for (; m < n; ++m) mx = std::max(mx, pg[m]);
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
#ifdef __AVX512F__
      for (; c + 128 <= d8; c += 128) weighted_values16<8>(pg, values + c, d, j0, j1, og + c);
      if (d8 - c == 64) weighted_values16<4>(pg, values + c, d, j0, j1, og + c), c += 64;  // the common head sizes' rest
#endif
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

}  // namespace

// A decode step's attention for one new token per sequence, in one call: rotate q [B, (1,) H, D]
// and k [B, (1,) Hkv, D] by rot (cos, sin of each pair's angle: complex [B, ..., D/2] or its
// float [..., 2] view), store k and v in the caches' `layer` (caches [L, R, Hkv, S, D]) at slot
// positions[b] of row rows[b] (default b), then attend from q to slots 0 .. positions[b] of
// that row (softmax, scale 1/sqrt(D)). Returns q's shape. Shapes are handled here, not in
// Python: each torch view costs microseconds, and this runs once a layer per token.
at::Tensor decode_attention(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor rot,
                               at::Tensor caches_k, at::Tensor caches_v, int64_t layer,
                               c10::optional<at::Tensor> rows_or_none, at::Tensor positions) {
  for (const auto* t : {&q, &k, &v, &caches_k, &caches_v})
    TORCH_CHECK(t->dtype() == at::kFloat, "decode_attention: float32 tensors");
  TORCH_CHECK(rot.dtype() == at::kFloat || rot.dtype() == at::kComplexFloat, "decode_attention: float32 rotations");
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
  // read by pointer as [B, H, D], [B, Hkv, D]: no view() or contiguous() calls where none is needed
  for (auto* t : {&q, &k, &v, &rot})
    if (!t->is_contiguous()) *t = t->contiguous();
  const int64_t rot_floats = rot.numel() * (rot.is_complex() ? 2 : 1);
  std::vector<int64_t> identity;
  at::Tensor rows;
  if (rows_or_none.has_value()) {
    rows = rows_or_none->scalar_type() == at::kLong && rows_or_none->is_contiguous() ? *rows_or_none : rows_or_none->to(at::kLong).contiguous();
  } else {
    for (int64_t i = 0; i < b; ++i) identity.push_back(i);
  }
  if (positions.scalar_type() != at::kLong || !positions.is_contiguous()) positions = positions.to(at::kLong).contiguous();
  TORCH_CHECK(d % 2 == 0 && k.size(0) == b && k.size(-1) == d && caches_k.size(4) == d && h % hkv == 0 &&
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
  auto out = at::empty(out_shape, q.options());
  float* op = out.data_ptr<float>();
  const float scale = 1.f / std::sqrt(float(d));
  const int64_t group = h / hkv;
  // The work, in key vectors read: below 4k (a 32-head model's first 128 tokens) one thread,
  // as waking another costs about what it saves. TinyLlama shapes, 2 threads, a block's decode
  // step against a 64k threshold: 1000 tokens 0.74-0.80 -> 0.64 ms, 8 rows at 100 tokens
  // 1.82-1.87 -> 1.75 ms; 2k no better at 60 and 130 tokens.
  int64_t keys = 0;
  for (int64_t i = 0; i < b; ++i) keys += (pp[i] + 1) * h;
  const int64_t grain = keys < (1 << 12) ? b * hkv : 1;
  at::parallel_for(0, b * hkv, grain, [&](int64_t a, int64_t e) {
    Filled<float> p(group * s), qr(group * d);  // written before read: not zeroed (s: the whole cache)
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
  return out;
}

// A transformer block's decode step (one new token per row, x float32 [B, 1, dim]) in one
// call: h = x + wo(attention(wqkv(norm(x)))), then h + w2(silu(w1 h') * w3 h') with h' the
// normed h, its w1 and w3 fused in w13. The Python block does the same op by op; here no
// Python runs between them (a small model's decode step spent more time there than in its
// products). weights: wqkv, wo, w13, w2, packed (gemm_packed), or wq, wk, wv, wo, w13, w2
// where q, k and v differ in type (a Q4_K_M file's v is Q6_K in some layers); spec: GGML type
// and out features of each; x_terms: the int8 terms carrying x.
at::Tensor decode_block(at::Tensor x, at::Tensor attention_norm, at::Tensor ffn_norm, double eps,
                        std::vector<at::Tensor> weights, std::vector<int64_t> spec, int64_t x_terms,
                        int64_t n_heads, int64_t n_kv_heads, at::Tensor rot, at::Tensor caches_k, at::Tensor caches_v,
                        int64_t layer, c10::optional<at::Tensor> rows, at::Tensor positions) {
  const int64_t parts = int64_t(weights.size());
  TORCH_CHECK((parts == 4 || parts == 6) && int64_t(spec.size()) == 2 * parts,
              "decode_block: packed products wqkv (or wq, wk, wv), wo, w13, w2 and their specs");
  TORCH_CHECK(x.dtype() == at::kFloat && x.dim() == 3 && x.size(1) == 1, "decode_block: x float32 [B, 1, dim]");
  const int64_t b = x.size(0), qkv = parts == 4 ? spec[1] : spec[1] + spec[3] + spec[5], d = qkv / (n_heads + 2 * n_kv_heads);
  TORCH_CHECK(d > 0 && d * (n_heads + 2 * n_kv_heads) == qkv, "decode_block: q, k and v's outputs are not H + 2 Hkv heads");
  TORCH_CHECK(parts == 4 || (spec[1] == n_heads * d && spec[3] == n_kv_heads * d && spec[5] == n_kv_heads * d),
              "decode_block: wq, wk, wv's outputs are not H, Hkv and Hkv heads");
  auto linear = [&](const at::Tensor& in, int64_t i) { return gemm_packed(in, weights[i], spec[2 * i], spec[2 * i + 1], x_terms); };
  const auto normed = rms_norm(x, attention_norm, eps);
  at::Tensor q, k, v;
  if (parts == 4) {
    const auto proj = linear(normed, 0);  // [B, 1, (H + 2 Hkv) D]
    q = proj.narrow(-1, 0, n_heads * d);
    k = proj.narrow(-1, n_heads * d, n_kv_heads * d);
    v = proj.narrow(-1, (n_heads + n_kv_heads) * d, n_kv_heads * d);
  } else {
    q = linear(normed, 0), k = linear(normed, 1), v = linear(normed, 2);
  }
  q = q.view({b, 1, n_heads, d}), k = k.view({b, 1, n_kv_heads, d}), v = v.view({b, 1, n_kv_heads, d});
  const auto attended = decode_attention(q, k, v, rot, caches_k, caches_v, layer, rows, positions);
  const int64_t wo = parts - 3;  // then w13, w2
  auto h = linear(attended.view({b, 1, n_heads * d}), wo);
  h.add_(x);
  auto out = linear(silu_mul(linear(rms_norm(h, ffn_norm, eps), wo + 1), c10::nullopt), wo + 2);
  return out.add_(h);
}

}  // namespace llamaherd
