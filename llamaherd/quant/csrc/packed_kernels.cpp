// Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL and Q8_0 in the packed 8-row layout (packed_layout.h): pack,
// unpack, decode to float32, and products in integers with x rounded to int8 blocks; and the
// packed layout's entry points, for the k-quants too (packed_kquant_kernels.cpp).
#include "amx_tiles.h"
#include "kernels.h"
#include "packed_layout.h"

namespace llamaherd {

namespace packed {

namespace {

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

// The 4- and 5-bit types: where their parts sit in a GGML block and in a packed one.
template <int64_t T> constexpr bool HAS_MIN = T == Q4_1 || T == Q5_1;  // d * q + m, else d * (q - OFFSET)
template <int64_t T> constexpr bool FIVE_BITS = T == Q5_0 || T == Q5_1;
template <int64_t T> constexpr int OFFSET = HAS_MIN<T> ? 0 : (FIVE_BITS<T> ? 16 : 8);
template <int64_t T> constexpr int SRC_QH = HAS_MIN<T> ? 4 : 2;                     // GGML block: d | (m) | (qh) | qs
template <int64_t T> constexpr int SRC_QS = SRC_QH<T> + (FIVE_BITS<T> ? 4 : 0);
template <int64_t T> constexpr int PACKED_QH = HAS_MIN<T> ? 32 : 16;                // packed: d[8] | (m[8]) | (qh[8]) | chunks
template <int64_t T> constexpr int PACKED_QS = PACKED_QH<T> + (FIVE_BITS<T> ? 32 : 0);
// IQ4_NL: Q4_0's layout, but each nibble indexes IQ4_LEVELS (common.h): d * level
template <int64_t T> constexpr bool LEVELS = T == IQ4_NL;

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

#ifdef __AVX512VNNI__
// The same for two groups' chunks (Lanes16): the byte picks repeat in each 128-bit lane.
inline void add_fifth_bits(__m512i qh, int c, __m512i& lo, __m512i& hi) {
  const __m512i pick = _mm512_add_epi8(_mm512_broadcast_i32x4(_mm_setr_epi8(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12)), _mm512_set1_epi8(char(c)));
  const __m512i bits = _mm512_shuffle_epi8(qh, pick), five = _mm512_set1_epi8(0x10);
  lo = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(bits, _mm512_set1_epi32(0x08040201)), lo, five);
  hi = _mm512_mask_add_epi8(hi, _mm512_test_epi8_mask(bits, _mm512_set1_epi32(int(0x80402010u))), hi, five);
}
#endif

}  // namespace

// A row's 32-value block `src` (GGML layout) into packed block `dst`, as row r of the 8.
template <int64_t T>
void pack_block(const uint8_t* src, int r, uint8_t* dst) {
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
    store_chunks(_mm_and_si128(raw, mask), _mm_and_si128(_mm_srli_epi16(raw, 4), mask), r, out);
  }
}

template <int64_t T>
void unpack_block(const uint8_t* src, int r, uint8_t* dst) {
  std::memcpy(dst, src + 2 * r, 2);
  if constexpr (T == Q8_0) {
    for (int c = 0; c < 8; ++c) std::memcpy(dst + 2 + 4 * c, src + 16 + 32 * c + 4 * r, 4);
  } else {
    const uint8_t* in = src + PACKED_QS<T>;
    uint8_t* qs = dst + SRC_QS<T>;
    if constexpr (HAS_MIN<T>) std::memcpy(dst + 2, src + 16 + 2 * r, 2);
    if constexpr (FIVE_BITS<T>) std::memcpy(dst + SRC_QH<T>, src + PACKED_QH<T> + 4 * r, 4);
    uint8_t v[32];
    load_chunks(in, r, v);
    for (int j = 0; j < 16; ++j) qs[j] = uint8_t(v[j] | (v[j + 16] << 4));
  }
}

// One block of a packed group decoded to float32: row r's 32 values to out + r * k. Each
// register pair (a, b) holds, for every row, 4 values in a's dword r and the next 4 in b's
// (chunk_rows). Same arithmetic as GGML's (d * (q - 8 or 16), d * q + m, d * q), so the floats are identical.
template <int64_t T>
void dequant_group_block(const uint8_t* blk, float* out, int64_t k) {
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
    __m256 rows[8];
    chunk_rows(a, b, rows);
    for (int r = 0; r < 8; ++r) {
      __m256 v = rows[r];
      if constexpr (T == Q8_0 || LEVELS<T>) v = _mm256_mul_ps(_mm256_set1_ps(d[r]), v);
      else if constexpr (HAS_MIN<T>) v = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(d[r]), v), _mm256_set1_ps(m[r]));
      else v = _mm256_mul_ps(_mm256_set1_ps(d[r]), _mm256_sub_ps(v, _mm256_set1_ps(float(OFFSET<T>))));
      _mm256_storeu_ps(out + r * k + 8 * c, v);
    }
  }
}

// Row r of a packed block decoded to float32 at o (a group cut by a run's ends), as GGML
// defines the values: Q4_0 d * (q - 8), Q5_0 d * (q - 16), Q4_1 and Q5_1 d * q + m, Q8_0 d * q.
template <int64_t T>
void dequant_row_block(const uint8_t* blk, int r, float* o) {
  const float d = half(blk + 2 * r);
  if constexpr (T == Q8_0) {
    for (int c = 0; c < 8; ++c)
      for (int i = 0; i < 4; ++i) o[4 * c + i] = d * float(int8_t(blk[16 + 32 * c + 4 * r + i]));
  } else {
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

namespace {

// A row of x's block b as its terms carry it (quantize_act): x = e * sum_t q_t * 128^(TERMS-1-t).
// `all` sums the block's values (e * the terms' sums, as combined), for the minimums of Q4_1 and
// Q5_1; start[t] is term t's integer chain's first value: -OFFSET times the sum of its values,
// so the chains sum (q - OFFSET) x without a correction in floats.
struct BlockTerms {
  float e, all;
  int32_t start[3];
};

Filled<BlockTerms> block_terms(const Q8Act& a, int64_t m, int64_t nb, int64_t terms, int offset) {
  Filled<BlockTerms> out(m * nb);
  const float top = std::ldexp(1.f, TERM_SHIFT * int(terms - 1)), inv_top = 1.f / top;  // powers of two: exact
  for (int64_t r = 0; r < m; ++r)
    for (int64_t b = 0; b < nb; ++b) {
      const int32_t* s = a.s.data() + r * terms * nb + b;  // term t's sum at s[t * nb]
      int32_t tail = 0;
      BlockTerms& x = out[r * nb + b];
      for (int64_t t = 0; t < terms; ++t) x.start[t] = -offset * s[t * nb];
      for (int64_t t = 1; t < terms; ++t) tail = (tail << TERM_SHIFT) + s[t * nb];
      x.e = a.d[r * terms * nb + b] * inv_top;
      x.all = x.e * (float(s[0]) * top + float(tail));
    }
  return out;
}

// start + the int32 dot products of one packed block's rows (lanes) with 32 int8 values at xb,
// from the block's nibbles (values 8c..8c+3 of each row in lo[c], 8c+4..8c+7 in hi[c]).
template <int64_t T, class L>
inline typename L::I nibble_dot(const typename L::I* lo, const typename L::I* hi, const int8_t* xb, typename L::I start) {
  if constexpr (LEVELS<T>) {  // signed levels: |w| times x carrying w's sign, as Q8_0 (pair sums <= 2 * 127 * 127)
    typename L::I dot = start;
    for (int c = 0; c < 4; ++c) {
      dot = L::dot4(dot, L::magnitude(lo[c]), L::with_sign(L::x4(xb + 8 * c), L::sign_of(lo[c])));
      dot = L::dot4(dot, L::magnitude(hi[c]), L::with_sign(L::x4(xb + 8 * c + 4), L::sign_of(hi[c])));
    }
    return dot;
  } else if constexpr (L::VNNI) {
    // one chain a row and term: a tile keeps several in flight (with one row of x, memory
    // bounds the speed, not the chain's latency)
    typename L::I dot = start;
    for (int c = 0; c < 4; ++c) {
      dot = L::dot4_x(dot, lo[c], xb + 8 * c);
      dot = L::dot4_x(dot, hi[c], xb + 8 * c + 4);
    }
    return dot;
  } else {
    // unsigned 4-bit x int8: pair sums <= 2 * 15 * 127, all eight <= 30480: int16 holds the
    // block (5-bit: half of it, 4 * 2 * 31 * 127 <= 31496, so two halves).
    const __m256i ones16 = _mm256_set1_epi16(1);
    __m256i s[4];
    chunk_sums16(lo, hi, xb, s);
    if constexpr (FIVE_BITS<T>)
      return _mm256_add_epi32(start, _mm256_add_epi32(_mm256_madd_epi16(_mm256_add_epi16(s[0], s[1]), ones16),
                                                      _mm256_madd_epi16(_mm256_add_epi16(s[2], s[3]), ones16)));
    else
      return _mm256_add_epi32(start, _mm256_madd_epi16(_mm256_add_epi16(_mm256_add_epi16(s[0], s[1]), _mm256_add_epi16(s[2], s[3])), ones16));
  }
}

// A packed block's values of each row (lanes), the nibble types' (Q8_0's are its chunks as
// they are): values 8c..8c+3 in lo[c], 8c+4..8c+7 in hi[c], the fifth bits added, or the
// IQ4_NL levels looked up. Always inlined: GCC kept the 5-bit types' out of line, and their
// values then went through memory every block.
template <int64_t T, class L>
[[gnu::always_inline]] inline void block_nibbles(const uint8_t* blk, int64_t stride, typename L::I lo[4], typename L::I hi[4]) {
  typename L::I qh;
  if constexpr (FIVE_BITS<T>) qh = L::chunk(blk + PACKED_QH<T>, stride);
  for (int c = 0; c < 4; ++c) {
    const typename L::I raw = L::chunk(blk + PACKED_QS<T> + 32 * c, stride);
    lo[c] = L::low4(raw);
    hi[c] = L::high4(raw);
    if constexpr (FIVE_BITS<T>) add_fifth_bits(qh, c, lo[c], hi[c]);
    if constexpr (LEVELS<T>) lo[c] = iq4_levels(lo[c]), hi[c] = iq4_levels(hi[c]);
  }
}

// The 4- and 5-bit types' terms add up in int32: |sum (q - OFFSET) x| <= 32 * 31 * 127 for the
// first term (at most 126k, times 128^2 below 2^31) and 32 * 31 * 64 for the others.
// Q8_0's and IQ4_NL's first term (up to 32 * 128 * 127) would overflow.
template <int64_t T> constexpr bool TERMS_IN_INT32 = T != Q8_0 && !LEVELS<T>;

// acc += one block's products of a row of x (its TERMS dot products with each weight row, dot)
// as floats: dw (and mw) are the weight rows' scales (and minimums). Terms are added in
// integers, then converted once: all of them where int32 holds the sum (TERMS_IN_INT32), else
// the first term's dot product and the others' combined, both exact in float32, joined by one
// multiply-add. Either way the one rounding is of the same exact sum: the same floats.
template <int64_t T, int TERMS, class L>
inline void add_block(const typename L::I* dot, const BlockTerms& x, typename L::F dw, typename L::F mw, typename L::F& acc) {
  using I = typename L::I;
  using F = typename L::F;
  F f;
  if constexpr (TERMS_IN_INT32<T>) {
    I sum = dot[0];
    for (int t = 1; t < TERMS; ++t) sum = L::add(L::shift_left(sum, TERM_SHIFT), dot[t]);
    f = L::to_float(sum);
  } else {
    f = L::to_float(dot[0]);
    if constexpr (TERMS > 1) {
      I tail = dot[1];
      for (int t = 2; t < TERMS; ++t) tail = L::add(L::shift_left(tail, TERM_SHIFT), dot[t]);
      f = L::fmadd(f, L::all(std::ldexp(1.f, TERM_SHIFT * (TERMS - 1))), L::to_float(tail));
    }
  }
  acc = L::fmadd(L::mul(dw, L::all(x.e)), f, acc);
  if constexpr (HAS_MIN<T>) acc = L::fmadd(mw, L::all(x.all), acc);
}

// y[m, 8g ..] for TM rows of x, each carried by TERMS int8 terms, against L::ROWS / 8 weight
// groups from g (at gw; the next one `stride` bytes on), a row of the weight a lane; row m of
// the tile at out + m * out_stride.
template <int64_t T, int TM, int TERMS, class L>
inline void packed_group_tile(const uint8_t* gw, int64_t stride, int64_t nb, const Q8Act& a, const BlockTerms* bt, int64_t m0, int64_t k,
                              float* out, int64_t out_stride) {
  using I = typename L::I;
  using F = typename L::F;
  const int64_t gb = packed_block_bytes(T);
  F acc[TM];
  for (int m = 0; m < TM; ++m) acc[m] = L::all(0.f);
  const int8_t* xq = a.q.data() + m0 * TERMS * k;  // row m's term t at xq + (m * TERMS + t) * k
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = gw + b * gb;
    L::prefetch(blk, gb, stride);
    const F dw = L::halves(blk, stride);
    const F mw = HAS_MIN<T> ? L::halves(blk + 16, stride) : L::all(0.f);
    I dot[TM][TERMS];
    if constexpr (T == Q8_0) {
      for (int m = 0; m < TM; ++m)
        for (int t = 0; t < TERMS; ++t) dot[m][t] = L::zero();
      for (int c = 0; c < 8; ++c) {
        const I w = L::chunk(blk + 16 + 32 * c, stride);
        const I aw = L::magnitude(w);  // |w| as unsigned bytes; the sign moves onto x
        const typename L::Sign sw = L::sign_of(w);
        for (int m = 0; m < TM; ++m)
          for (int t = 0; t < TERMS; ++t)  // |pair sums| <= 2 * 128 * 127
            dot[m][t] = L::dot4(dot[m][t], aw, L::with_sign(L::x4(xq + (m * TERMS + t) * k + 32 * b + 4 * c), sw));
      }
    } else {  // the block's 32 nibbles of each row, unpacked once for all rows of x
      I lo[4], hi[4];
      block_nibbles<T, L>(blk, stride, lo, hi);
      for (int m = 0; m < TM; ++m)
        for (int t = 0; t < TERMS; ++t)
          dot[m][t] = nibble_dot<T, L>(lo, hi, xq + (m * TERMS + t) * k + 32 * b, L::all_int(bt[m * nb + b].start[t]));
    }
    for (int m = 0; m < TM; ++m) add_block<T, TERMS, L>(dot[m], bt[m * nb + b], dw, mw, acc[m]);
  }
  for (int m = 0; m < TM; ++m) L::store(out + out_stride * m, acc[m]);
}

constexpr int PACKED_TM = 4;  // x rows per pass over the weight groups (Lanes8: 16 vector registers)

// packed_group_tile for tm rows of x carried by `terms` terms (their counts made constants).
template <int64_t T, class L, int TERMS = 0>
void packed_tile(int64_t terms, int64_t tm, const uint8_t* gw, int64_t stride, int64_t nb, const Q8Act& a, const BlockTerms* bt,
                 int64_t m0, int64_t k, float* out, int64_t out_stride) {
  if constexpr (TERMS == 0) {
    switch (terms) {
      case 1: return packed_tile<T, L, 1>(terms, tm, gw, stride, nb, a, bt, m0, k, out, out_stride);
      case 2: return packed_tile<T, L, 2>(terms, tm, gw, stride, nb, a, bt, m0, k, out, out_stride);
      default: return packed_tile<T, L, 3>(terms, tm, gw, stride, nb, a, bt, m0, k, out, out_stride);
    }
  } else {
    switch (tm) {
      case 1: return packed_group_tile<T, 1, TERMS, L>(gw, stride, nb, a, bt, m0, k, out, out_stride);
      case 2: return packed_group_tile<T, 2, TERMS, L>(gw, stride, nb, a, bt, m0, k, out, out_stride);
      case 3: return packed_group_tile<T, 3, TERMS, L>(gw, stride, nb, a, bt, m0, k, out, out_stride);
      default: return packed_group_tile<T, 4, TERMS, L>(gw, stride, nb, a, bt, m0, k, out, out_stride);
    }
  }
}

#ifdef __AMX_INT8__
// The 32-value types on AMX tiles (amx_tiles.h): TinyLlama's layers with 8 rows of x in three
// terms, 1.4x faster than the vectors; one term, 1.1x.
//
// y[m0 .., 8g .. 8g+15] for xr rows of x (xr * TERMS <= TERM_ROWS) against groups g, g+1 (gw;
// the next `stride` on), row i at out + i * out_stride. xa: the rows' terms block by block
// (block j's at xa + j * xr * TERMS * 32), so a tile's rows are one contiguous run.
// The values go to the tiles as signed bytes: the offset types' as q - OFFSET, which sums
// (q - OFFSET) x without the starts the vector chains need; the others' as they are (Q4_1's
// and Q5_1's, below 32, are the same signed).
template <int64_t T, int TERMS>
void pair_rows_on_tiles(const uint8_t* gw, int64_t stride, int64_t nb, const int8_t* xa, const BlockTerms* bt, int64_t xr,
                        float* out, int64_t out_stride) {
  using L = Lanes16;
  constexpr bool SUBTRACT = TERMS_IN_INT32<T> && OFFSET<T> != 0;
  const int64_t gb = packed_block_bytes(T), tr = xr * TERMS;
  const bool two = tr > 16;
  alignas(64) uint8_t bv[2][512];
  alignas(64) int32_t c[2][amx::TERM_ROWS * 16];
  __m512 acc[amx::TERM_ROWS / TERMS];
  for (int64_t i = 0; i < xr; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb + 2; ++b) {
    if (b < nb) {  // unpack block b
      const uint8_t* blk = gw + b * gb;
      L::prefetch(blk, gb, stride);
      if constexpr (T == Q8_0) {
        for (int q = 0; q < 8; ++q) _mm512_store_si512(bv[b & 1] + 64 * q, L::chunk(blk + 16 + 32 * q, stride));
      } else {
        __m512i lo[4], hi[4];
        block_nibbles<T, L>(blk, stride, lo, hi);
        if constexpr (SUBTRACT)
          for (int q = 0; q < 4; ++q) lo[q] = _mm512_sub_epi8(lo[q], L::bytes(OFFSET<T>)), hi[q] = _mm512_sub_epi8(hi[q], L::bytes(OFFSET<T>));
        amx::store_block(lo, hi, bv[b & 1]);
      }
    }
    if (b >= 1 && b <= nb) amx::block_products(bv[(b - 1) & 1], xa + (b - 1) * tr * 32, two, c[(b - 1) & 1]);
    if (b >= 2) {  // add up block j
      const int64_t j = b - 2;
      const uint8_t* blk = gw + j * gb;
      const __m512 dw = L::halves(blk, stride), mw = HAS_MIN<T> ? L::halves(blk + 16, stride) : _mm512_setzero_ps();
      const int32_t* cj = c[j & 1];
      for (int64_t i = 0; i < xr; ++i) {
        __m512i dot[TERMS];
        for (int t = 0; t < TERMS; ++t) dot[t] = _mm512_load_si512(cj + (i * TERMS + t) * 16);
        add_block<T, TERMS, L>(dot, bt[i * nb + j], dw, mw, acc[i]);
      }
    }
  }
  for (int64_t i = 0; i < xr; ++i) _mm512_storeu_ps(out + i * out_stride, acc[i]);
}

template <int64_t T, int TERMS>
void gemm_on_tiles(const Q8Act& a, const Filled<BlockTerms>& bt, const uint8_t* w, int64_t m, int64_t k, int64_t n, float* y) {
  const int64_t nb = k / 32, stride = nb * packed_block_bytes(T);
  amx::gemm_on_tiles<TERMS>(
      a, m, k, n, stride, w, y,
      [&](const uint8_t* gw, int64_t m0, int64_t xr, const int8_t* xa, float* out) {
        pair_rows_on_tiles<T, TERMS>(gw, stride, nb, xa, bt.data() + m0 * nb, xr, out, 16);
      },
      [&](const uint8_t* gw, int64_t m0, int64_t xr, float* out) {
        for (int64_t r = 0; r < xr; r += PACKED_TM)
          packed_tile<T, Lanes8>(TERMS, std::min<int64_t>(PACKED_TM, xr - r), gw, stride, nb, a, bt.data() + (m0 + r) * nb, m0 + r, k,
                                 out + 16 * r, 16);
      });
}
#endif

// y [m, n] = the products of the m rows of x, each carried by `terms` int8 terms in `a` (see
// quantize_act): on AMX tiles where they pay (amx::pays), else WideLanes' rows at a time (an
// odd last group: Lanes8). Threads split the weight groups, so they write apart.
template <int64_t T>
void packed_gemm(const Q8Act& a, const uint8_t* w, int64_t m, int64_t terms, int64_t k, int64_t n, float* y) {
  const int64_t nb = k / 32, gb = packed_block_bytes(T), stride = nb * gb, groups = groups_of(n);
  constexpr int WIDE = WideLanes::ROWS / 8;
  const Filled<BlockTerms> bt = block_terms(a, m, nb, terms, TERMS_IN_INT32<T> ? OFFSET<T> : 0);
#ifdef __AMX_INT8__
  if (amx::pays(m, terms)) {
    switch (terms) {
      case 1: return gemm_on_tiles<T, 1>(a, bt, w, m, k, n, y);
      case 2: return gemm_on_tiles<T, 2>(a, bt, w, m, k, n, y);
      default: return gemm_on_tiles<T, 3>(a, bt, w, m, k, n, y);
    }
  }
#endif
  for_group_tiles<PACKED_TM, WIDE>(m, n, stride, terms, y, [&](int64_t g, int64_t m0, int64_t tm, float* out) {
    const uint8_t* gw = w + g * stride;
    const BlockTerms* rows = bt.data() + m0 * nb;
    if (g + WIDE > groups)  // the last group alone, into the tile's first 8 columns of each row
      return packed_tile<T, Lanes8>(terms, tm, gw, stride, nb, a, rows, m0, k, out, WideLanes::ROWS);
    packed_tile<T, WideLanes>(terms, tm, gw, stride, nb, a, rows, m0, k, out, WideLanes::ROWS);
  });
}

}  // namespace

}  // namespace packed

using namespace packed;

bool use_amx(bool on) {
#ifdef __AMX_INT8__
  static const bool available = amx::enabled().load();
  amx::enabled().store(on && available);
  return on && available;
#else
  return false;
#endif
}

bool amx() {
#ifdef __AMX_INT8__
  return amx::enabled().load();
#else
  return false;
#endif
}

// The weights `parts` (GGML bytes of one type, K values a row) stacked by rows and packed, into
// `out` when given (a contiguous uint8 run of exactly the packed size: a slice of a bigger
// packed weight, for a weight packed a chunk of groups at a time).
at::Tensor pack(std::vector<at::Tensor> parts, int64_t type, int64_t k, std::optional<at::Tensor> out_arg) {
  TORCH_CHECK(k > 0 && k % packed_block_values(type) == 0, "row length must be a positive multiple of ", packed_block_values(type));
  const int64_t rb = row_bytes(type, k);
  std::vector<const uint8_t*> rows;
  for (const auto& p : parts) {
    TORCH_CHECK(p.dtype() == at::kByte && p.is_contiguous() && p.dim() == 1 && p.numel() % rb == 0,
                "each part must be contiguous 1-D uint8 holding whole rows");
    for (int64_t r = 0; r < p.numel() / rb; ++r) rows.push_back(p.data_ptr<uint8_t>() + r * rb);
  }
  const int64_t n = rows.size(), size = packed_bytes(type, n, k);
  const int64_t group_bytes = (k / packed_block_values(type)) * packed_block_bytes(type);
  at::Tensor out;
  if (out_arg) {
    out = *out_arg;
    TORCH_CHECK(out.dtype() == at::kByte && out.is_contiguous() && out.dim() == 1 && out.numel() == size,
                "out must be contiguous 1-D uint8 of ", size, " bytes");
  } else {
    out = at::empty({size}, at::kByte);
  }
  if (n % 8) std::memset(out.data_ptr<uint8_t>() + (groups_of(n) - 1) * group_bytes, 0, group_bytes);  // padding rows
  if (is_kquant(type)) {
    kquant_pack(type, rows, k, out.data_ptr<uint8_t>());
    return out;
  }
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

int64_t packed_bytes(int64_t type, int64_t n, int64_t k) {
  const int64_t vals = packed_block_values(type);
  TORCH_CHECK(n >= 0 && k > 0 && k % vals == 0, "row length must be a positive multiple of ", vals);
  return groups_of(n) * (k / vals) * packed_block_bytes(type);
}

void check_packed(const at::Tensor& w, int64_t type, int64_t n, int64_t k) {
  TORCH_CHECK(w.dtype() == at::kByte && w.is_contiguous() && w.dim() == 1, "packed weight must be contiguous 1-D uint8");
  TORCH_CHECK(w.numel() == packed_bytes(type, n, k), "packed weight has ", w.numel(),
              " bytes, not the size of ", n, " rows of ", k);
}

// The GGML bytes of a packed weight (N rows of K values), exactly as they were before pack().
at::Tensor unpack(at::Tensor w, int64_t type, int64_t n, int64_t k) {
  check_packed(w, type, n, k);
  auto out = at::empty({n * row_bytes(type, k)}, at::kByte);
  if (is_kquant(type)) {
    kquant_unpack(type, w.data_ptr<uint8_t>(), n, k, out.data_ptr<uint8_t>());
    return out;
  }
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
void dequant_packed(at::Tensor w, int64_t type, int64_t n, int64_t k, int64_t r0, int64_t r1, at::Tensor out) {
  check_packed(w, type, n, k);
  check_row_run(out, n, k, r0, r1);
  if (is_kquant(type)) return kquant_dequant(type, w.data_ptr<uint8_t>(), k, r0, r1, out.data_ptr<float>());
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

// x: float32 [..., K]; w: a packed weight of N rows; x_terms: 1 to 3 int8 terms per row of x
// (see quantize_act). Returns float32 [..., N].
at::Tensor gemm_packed(at::Tensor x_in, at::Tensor w, int64_t type, int64_t n, int64_t x_terms) {
  auto [x, out_shape, m, k] = product_rows(x_in, n, x_terms);
  check_packed(w, type, n, k);
  auto y = at::empty(out_shape, x.options());
  if (is_kquant(type)) {  // k-quants: x in blocks of 256, their own kernels
    kquant_gemm(type, x.data_ptr<float>(), w.data_ptr<uint8_t>(), m, x_terms, k, n, y.data_ptr<float>());
    return y;
  }
  const Q8Act a = quantize_act(x.data_ptr<float>(), m, k, x_terms);
  switch (type) {
    case Q4_0: packed_gemm<Q4_0>(a, w.data_ptr<uint8_t>(), m, x_terms, k, n, y.data_ptr<float>()); break;
    case Q4_1: packed_gemm<Q4_1>(a, w.data_ptr<uint8_t>(), m, x_terms, k, n, y.data_ptr<float>()); break;
    case Q5_0: packed_gemm<Q5_0>(a, w.data_ptr<uint8_t>(), m, x_terms, k, n, y.data_ptr<float>()); break;
    case Q5_1: packed_gemm<Q5_1>(a, w.data_ptr<uint8_t>(), m, x_terms, k, n, y.data_ptr<float>()); break;
    case IQ4_NL: packed_gemm<IQ4_NL>(a, w.data_ptr<uint8_t>(), m, x_terms, k, n, y.data_ptr<float>()); break;
    case Q8_0: packed_gemm<Q8_0>(a, w.data_ptr<uint8_t>(), m, x_terms, k, n, y.data_ptr<float>()); break;
    default: TORCH_CHECK(false, "GGML type ", type, " has no packed layout");
  }
  return y;
}

}  // namespace llamaherd
