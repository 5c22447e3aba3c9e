// AMX tiles (Intel since Sapphire Rapids) for the packed products of many rows of x: one
// instruction multiplies 16 rows of int8 terms by a block of 32 values of 16 weight rows, where
// the vector kernels need 8 multiply-adds a row. The pieces both packed files use: the tiles'
// setup, one block's products, and the loop over group pairs and rows of x (gemm_on_tiles).
// Each type's kernel unpacks a group pair's block to bytes once (B: Lanes16's chunks, 4
// values of each of 16 rows a 64-byte row, the tiles' own order), multiplies it by x's terms
// laid out block by block (A), stores the int32 products (C) and adds them up as its vector
// kernel does: the same integers, so the same floats. Storing C bounds the speed (a row of
// terms costs a 64-byte store a block).
#pragma once

#include "packed_layout.h"

#ifdef __AMX_INT8__
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>

namespace llamaherd::packed::amx {

constexpr int64_t MIN_TERM_ROWS = 8;  // rows of x times terms from which the tiles beat the vectors
constexpr int64_t TERM_ROWS = 32;     // rows of terms a pass: two A tiles

struct TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Tiles 0, 1: A, up to 16 rows of terms each, of one block (32 int8; VALUES of them where a
// scale covers fewer); 2: B, those values of 16 weight rows, 4 a row; 3, 4: C, their int32
// products, as many rows as A's; with a second B (5), its C in 6 and 7. Tiles hold only the
// rows a pass has, and only the tiles it uses are configured: the products' stores bound the
// speed, and configuring 8 tiles where 5 would do cost the 32-value types 5% (Q4_0 prefill).
// (GCC's tile intrinsics take tile numbers as literal tokens.)
inline void configure(int64_t term_rows, int values, bool second_b) {
  TileConfig c{};
  c.palette = 1;
  const uint8_t a0 = uint8_t(std::min<int64_t>(16, term_rows)), a1 = uint8_t(std::max<int64_t>(1, term_rows - 16));
  c.rows[0] = c.rows[3] = a0;
  c.rows[1] = c.rows[4] = a1;
  c.colsb[0] = c.colsb[1] = uint16_t(values);
  c.rows[2] = uint8_t(values / 4), c.colsb[2] = 64;
  c.colsb[3] = c.colsb[4] = 64;
  if (second_b) {
    c.rows[5] = c.rows[2], c.colsb[5] = 64;
    c.rows[6] = a0, c.rows[7] = a1, c.colsb[6] = c.colsb[7] = 64;
  }
  _tile_loadconfig(&c);
}

// Linux lends the tiles' state to a process that asks (arch_prctl ARCH_REQ_XCOMP_PERM, 5.16+);
// use_amx(false) keeps to the vector kernels (tests compare the two).
inline std::atomic<bool>& enabled() {
  static std::atomic<bool> on{[] {
    constexpr long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
  }()};
  return on;
}

inline bool pays(int64_t m, int64_t terms) { return m * terms >= MIN_TERM_ROWS && enabled().load(std::memory_order_relaxed); }

// One block of a group pair: its values (bv, 512 bytes, int8; of a part of the block: the
// part's rows of B) times the pass's rows of terms (xa, 32 bytes apart; the second tile's
// from row 16) into c [rows][16].
inline void block_products(const uint8_t* bv, const int8_t* xa, bool two, int32_t* c) {
  _tile_loadd(2, bv, 64);
  _tile_loadd(0, xa, 32);
  _tile_zero(3);
  _tile_dpbssd(3, 0, 2);
  _tile_stored(3, c, 64);
  if (two) {
    _tile_loadd(1, xa + 16 * 32, 32);
    _tile_zero(4);
    _tile_dpbssd(4, 1, 2);
    _tile_stored(4, c + 16 * 16, 64);
  }
}

// Lanes16's lo and hi registers of a block (values 8q .. 8q+3 of 16 rows in lo[q], 8q+4 ..
// 8q+7 in hi[q]) as B's 8 rows, in that order.
inline void store_block(const __m512i* lo, const __m512i* hi, uint8_t* bv) {
  for (int q = 0; q < 4; ++q) {
    _mm512_store_si512(bv + 128 * q, lo[q]);
    _mm512_store_si512(bv + 128 * q + 64, hi[q]);
  }
}

// y [m, n] on the tiles, for x carried by TERMS int8 terms in `a` (32-value blocks of them, as
// quantize_act lays them out): threads split the pairs of weight groups (`stride` bytes a
// group), ROW_BLOCK rows of x at a time, whose terms stay in the caches while every pair goes
// by. pair(gw, m0, xr, xa, out) fills out [xr][16] for rows m0 .. m0+xr of x against groups
// g, g+1 at gw, xa their terms block by block (block j's xr * TERMS rows at xa + j * xr * TERMS
// * 32, so a tile's rows are one contiguous run); lone(gw, m0, xr, out) does an odd last group
// (its first 8 columns). VALUES, SECOND_B: the tiles' setup (configure).
template <int TERMS, int VALUES = 32, bool SECOND_B = false, class Pair, class Lone>
void gemm_on_tiles(const Q8Act& a, int64_t m, int64_t k, int64_t n, int64_t stride, const uint8_t* w, float* y, Pair pair, Lone lone) {
  constexpr int64_t XR = TERM_ROWS / TERMS, ROW_BLOCK = XR * (64 / XR);
  const int64_t nb = k / 32, groups = groups_of(n);
  Filled<int8_t> blocked(a.q.size());
  at::parallel_for(0, nb, std::max<int64_t>(1, 2048 / (m * TERMS)), [&](int64_t j0, int64_t j1) {
    for (int64_t m0 = 0; m0 < m; m0 += XR) {
      const int64_t tr = std::min(XR, m - m0) * TERMS;
      const int8_t* src = a.q.data() + m0 * TERMS * k;
      int8_t* dst = blocked.data() + m0 * TERMS * k;
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t r = 0; r < tr; ++r) std::memcpy(dst + (j * tr + r) * 32, src + r * k + 32 * j, 32);
    }
  });
  for (int64_t r0 = 0; r0 < m; r0 += ROW_BLOCK) {
    const int64_t r1 = std::min(m, r0 + ROW_BLOCK);
    const int64_t grain = std::max<int64_t>(1, PARALLEL_MIN_BYTES / (2 * stride * std::max<int64_t>(1, (r1 - r0) * TERMS / 4)));
    at::parallel_for(0, (groups + 1) / 2, grain, [&](int64_t p0, int64_t p1) {
      int64_t configured = 0;  // the tiles' rows of terms
      alignas(64) float out[XR * 16];
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t g = 2 * p, cols = std::min<int64_t>(16, n - 8 * g);
        const uint8_t* gw = w + g * stride;
        for (int64_t m0 = r0; m0 < r1; m0 += XR) {
          const int64_t xr = std::min(XR, r1 - m0);
          if (xr * TERMS != configured) configure(configured = xr * TERMS, VALUES, SECOND_B);
          if (g + 1 == groups) lone(gw, m0, xr, out);
          else pair(gw, m0, xr, blocked.data() + m0 * TERMS * k, out);
          for (int64_t i = 0; i < xr; ++i) std::memcpy(y + (m0 + i) * n + 8 * g, out + 16 * i, cols * sizeof(float));
        }
      }
      if (configured) _tile_release();
    });
  }
}

}  // namespace llamaherd::packed::amx
#endif
