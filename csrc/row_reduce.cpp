// The lane and row kernels of row_reduce.h, built for AVX-512, AVX2 and baseline x86-64
// and chosen by with_simd (cpu_features.h, as the ops' element loops): the 16 float64
// lanes are two AVX-512 or four AVX2 vectors. __restrict: the lanes stay in registers.
// Sums of products of floats have explicit kernels with fused multiply-adds (below).
#include <immintrin.h>

#include "row_reduce.h"

namespace fastscore {
namespace {

// A product of two converted values, or the square of one: a sum of squares (a == b, the
// corrector's and DSM's norms) converts each element once. Same product, same bits; on
// AVX-512 the conversions (two uops each) are most of the loop's work.
template <bool kSquare, typename T>
FS_SIMD_INLINE double product(const T* __restrict a, const T* __restrict b, int64_t i) {
  const double u = static_cast<double>(a[i]);
  return kSquare ? u * u : u * static_cast<double>(b[i]);
}

// lanes[l] += the products of elements g + l for g < n, n a multiple of kLanes.
template <bool kSquare, typename T>
FS_SIMD_INLINE void accumulate_dot_impl(const T* __restrict a, const T* __restrict b, double* __restrict lanes,
                                        int64_t n) {
  for (int64_t g = 0; g < n; g += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += product<kSquare>(a, b, g + l);
  }
}

// Two sums in one pass: twice accumulate_dot's independent add chains (its loop waits on
// the adds' latency), each lane added in the same order, so the same bits.
template <bool kSquare, typename T>
FS_SIMD_INLINE void accumulate_dot2_impl(const T* __restrict a0, const T* __restrict b0, double* __restrict lanes0,
                                         const T* __restrict a1, const T* __restrict b1, double* __restrict lanes1,
                                         int64_t n) {
  for (int64_t g = 0; g < n; g += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes0[l] += product<kSquare>(a0, b0, g + l);
    for (int l = 0; l < kLanes; ++l) lanes1[l] += product<kSquare>(a1, b1, g + l);
  }
}

// Rows go in batches of kRowBatch: the lanes of every row of a batch, then the batch's totals
// side by side (each row's lanes in lane order, so each total's bits are lane_total's): eight
// independent add chains instead of one 16-add chain per row.
constexpr int kRowBatch = 8;

FS_SIMD_INLINE void batch_totals(const double (*lanes)[kLanes], int m, double* out) {
  double total[kRowBatch] = {};
  for (int l = 0; l < kLanes; ++l) {
    for (int j = 0; j < kRowBatch; ++j) total[j] += lanes[j][l];
  }
  for (int j = 0; j < m; ++j) out[j] = total[j];
}

// out[q] = the total of row q's lanes for q < nr, rows in batches: row_lanes(q, lanes)
// writes row q's kLanes lanes (summed from 0).
template <typename RowLanes>
FS_SIMD_INLINE void fold_row_batches(int64_t nr, double* out, RowLanes&& row_lanes) {
  alignas(64) double lanes[kRowBatch][kLanes] = {};
  for (int64_t q0 = 0; q0 < nr; q0 += kRowBatch) {
    const int m = static_cast<int>(std::min<int64_t>(kRowBatch, nr - q0));
    for (int j = 0; j < m; ++j) row_lanes(q0 + j, lanes[j]);
    batch_totals(lanes, m, out + q0);
  }
}

// Rows of per_row > kLanes elements laid end to end: out[q] = row q's lanes
// (accumulate_dot's order) added in lane order — the generic loops (float64, or a CPU
// without AVX2; floats take exact_products_rows). Rows of whole groups take the lane
// kernel; others add their last partial group element by element (GCC vectorises a group
// loop followed by such a tail badly, splitting its lanes over odd widths).
template <bool kSquare, typename T>
FS_SIMD_INLINE void fold_lane_rows(const T* a, const T* b, int64_t nr, int64_t per_row, double* out) {
  if (per_row % kLanes == 0) {
    fold_row_batches(nr, out, [&](int64_t q, double* lanes) FS_SIMD_BODY {
      for (int l = 0; l < kLanes; ++l) lanes[l] = 0.0;
      accumulate_dot_impl<kSquare>(a + q * per_row, b + q * per_row, lanes, per_row);
    });
    return;
  }
  for (int64_t q = 0; q < nr; ++q) {
    const T* ar = a + q * per_row;
    const T* br = b + q * per_row;
    double lanes[kLanes];
    for (int l = 0; l < kLanes; ++l) lanes[l] = product<kSquare>(ar, br, l);
    for (int64_t t = kLanes; t < per_row; ++t) lanes[t % kLanes] += product<kSquare>(ar, br, t);
    out[q] = lane_total(lanes);
  }
}

// Rows of R <= kLanes elements: out[q] = sum_t a[q R + t] * b[q R + t] in order (each lane
// holds one product), for q < nr.
template <bool kSquare, typename T, int R>
FS_SIMD_INLINE void fold_fixed_rows(const T* a, const T* b, int64_t nr, double* out) {
  for (int64_t q = 0; q < nr; ++q) {
    double total = 0.0;
    for (int t = 0; t < R; ++t) total += product<kSquare>(a, b, q * R + t);
    out[q] = total;
  }
}

template <typename T, int R>
FS_SIMD_INLINE void fold_fixed_rows(const T* a, const T* b, int64_t nr, double* out) {
  if (a == b) {  // a sum of squares converts each element once
    fold_fixed_rows<true, T, R>(a, a, nr, out);
  } else {
    fold_fixed_rows<false, T, R>(a, b, nr, out);
  }
}

// Rows of per_row <= kLanes elements, each width its own loop (vectorised across rows; a
// runtime width leaves one row's add chain alone, ~4 cycles per element).
template <typename T, int R = 1>
FS_SIMD_INLINE void fold_short_rows_impl(const T* a, const T* b, int64_t nr, int64_t per_row, double* out) {
  if constexpr (R <= kLanes) {
    if (per_row == R) return fold_fixed_rows<T, R>(a, b, nr, out);
    fold_short_rows_impl<T, R + 1>(a, b, nr, per_row, out);
  }
}

FS_SIMD_INLINE void add_pairs_impl(const double* v, int64_t first, int64_t n, double* lanes) {
  int64_t r = 0;
  for (; r < n && (first + r) % kLanes != 0; ++r) {
    for (int k = 0; k < 2; ++k) lanes[2 * ((first + r) % kLanes) + k] += v[2 * r + k];
  }
  for (; r + kLanes <= n; r += kLanes) {
    for (int l = 0; l < 2 * kLanes; ++l) lanes[l] += v[2 * r + l];
  }
  for (; r < n; ++r) {
    for (int k = 0; k < 2; ++k) lanes[2 * ((first + r) % kLanes) + k] += v[2 * r + k];
  }
}

// Sums of products of floats (the corrector's |s|^2 and |z|^2, DSM's |d|^2, sliced score
// matching's v.jv and v.s in float storage) with fused multiply-adds: a float widened to
// float64 has 24 significant bits, so the product of two (at most 48 bits, never over- or
// underflowing) is exact, and fma(u, w, lane) rounds once exactly where lane + u * w
// rounds — the same bits, a multiply fewer. A square (kSquare: a == b) converts each
// element once; on AVX-512 a widening conversion takes two uops, so the multiply is a
// quarter of the loop: the corrector's two sums run ~1.5x faster. A partial last group is
// read through masked loads, its missing lanes 0: lane + 0 * 0 is the lane (a -0 lane may
// turn +0, which no lane total can tell: totals start at +0). These and the exact square
// root are the extension's only fma (tests/test_cpu_rng.py).
// lanes[k][l] += a[k][g + l] * b[k][g + l] for g + l < n (fresh: lanes[k] start at 0, unread).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12: _mm512_cvtps_pd's _mm512_undefined_pd
#define FS_AVX512_FMA __attribute__((target("avx512f,avx512vl")))
#define FS_AVX2_FMA __attribute__((target("avx2,fma")))

#define FS_FMA_INLINE inline __attribute__((always_inline))

template <bool kSquare, int NS>
FS_AVX512_FMA FS_FMA_INLINE void exact_products_avx512_body(const float* const* a, const float* const* b,
                                                            double* const* lanes, int64_t n, bool fresh = false) {
  __m512d acc[NS][2];
  for (int k = 0; k < NS; ++k) {
    for (int h = 0; h < 2; ++h) acc[k][h] = fresh ? _mm512_setzero_pd() : _mm512_loadu_pd(lanes[k] + 8 * h);
  }
  auto add = [&](int k, int h, __m256 x, __m256 y) FS_AVX512_FMA {
    const __m512d u = _mm512_cvtps_pd(x);
    acc[k][h] = _mm512_fmadd_pd(u, kSquare ? u : _mm512_cvtps_pd(y), acc[k][h]);
  };
  const int64_t whole = n / kLanes * kLanes;
  for (int64_t g = 0; g < whole; g += kLanes) {
    for (int k = 0; k < NS; ++k) {
      for (int h = 0; h < 2; ++h) {
        const int64_t i = g + 8 * h;
        add(k, h, _mm256_loadu_ps(a[k] + i), kSquare ? _mm256_setzero_ps() : _mm256_loadu_ps(b[k] + i));
      }
    }
  }
  if (whole < n) {
    const unsigned mask = (1u << (n - whole)) - 1;
    for (int k = 0; k < NS; ++k) {
      for (int h = 0; h < 2; ++h) {
        const __mmask8 m = static_cast<__mmask8>(mask >> (8 * h));
        const int64_t i = whole + 8 * h;
        add(k, h, _mm256_maskz_loadu_ps(m, a[k] + i),
            kSquare ? _mm256_setzero_ps() : _mm256_maskz_loadu_ps(m, b[k] + i));
      }
    }
  }
  for (int k = 0; k < NS; ++k) {
    for (int h = 0; h < 2; ++h) _mm512_storeu_pd(lanes[k] + 8 * h, acc[k][h]);
  }
}
#pragma GCC diagnostic pop

template <bool kSquare, int NS>
FS_AVX2_FMA FS_FMA_INLINE void exact_products_avx2_body(const float* const* a, const float* const* b,
                                                        double* const* lanes, int64_t n, bool fresh = false) {
  __m256d acc[NS][4];
  for (int k = 0; k < NS; ++k) {
    for (int h = 0; h < 4; ++h) acc[k][h] = fresh ? _mm256_setzero_pd() : _mm256_loadu_pd(lanes[k] + 4 * h);
  }
  auto add = [&](int k, int h, __m128 x, __m128 y) FS_AVX2_FMA {
    const __m256d u = _mm256_cvtps_pd(x);
    acc[k][h] = _mm256_fmadd_pd(u, kSquare ? u : _mm256_cvtps_pd(y), acc[k][h]);
  };
  const int64_t whole = n / kLanes * kLanes;
  for (int64_t g = 0; g < whole; g += kLanes) {
    for (int k = 0; k < NS; ++k) {
      for (int h = 0; h < 4; ++h) {
        const int64_t i = g + 4 * h;
        add(k, h, _mm_loadu_ps(a[k] + i), kSquare ? _mm_setzero_ps() : _mm_loadu_ps(b[k] + i));
      }
    }
  }
  if (whole < n) {  // vmaskmovps reads only the group's elements
    const __m128i index = _mm_setr_epi32(0, 1, 2, 3);
    for (int h = 0; h < 4; ++h) {
      const __m128i m = _mm_cmpgt_epi32(_mm_set1_epi32(static_cast<int>(n - whole) - 4 * h), index);
      const int64_t i = whole + 4 * h;
      for (int k = 0; k < NS; ++k) {
        add(k, h, _mm_maskload_ps(a[k] + i, m), kSquare ? _mm_setzero_ps() : _mm_maskload_ps(b[k] + i, m));
      }
    }
  }
  for (int k = 0; k < NS; ++k) {
    for (int h = 0; h < 4; ++h) _mm256_storeu_pd(lanes[k] + 4 * h, acc[k][h]);
  }
}

template <bool kSquare, int NS>
FS_AVX512_FMA void exact_products_avx512(const float* const* a, const float* const* b, double* const* lanes,
                                         int64_t n) {
  exact_products_avx512_body<kSquare, NS>(a, b, lanes, n);
}
template <bool kSquare, int NS>
FS_AVX2_FMA void exact_products_avx2(const float* const* a, const float* const* b, double* const* lanes, int64_t n) {
  exact_products_avx2_body<kSquare, NS>(a, b, lanes, n);
}

// Rows of per_row elements laid end to end: out[q] = row q's lanes (the kernels above)
// added in lane order, in fold_row_batches — one call for many short rows.
template <bool kSquare>
FS_AVX512_FMA void exact_products_rows_avx512(const float* a, const float* b, int64_t nr, int64_t per_row,
                                              double* out) {
  fold_row_batches(nr, out, [&](int64_t q, double* lanes) FS_AVX512_FMA {
    const float* ra[1] = {a + q * per_row};
    const float* rb[1] = {b + q * per_row};
    exact_products_avx512_body<kSquare, 1>(ra, rb, &lanes, per_row, true);
  });
}
template <bool kSquare>
FS_AVX2_FMA void exact_products_rows_avx2(const float* a, const float* b, int64_t nr, int64_t per_row, double* out) {
  fold_row_batches(nr, out, [&](int64_t q, double* lanes) FS_AVX2_FMA {
    const float* ra[1] = {a + q * per_row};
    const float* rb[1] = {b + q * per_row};
    exact_products_avx2_body<kSquare, 1>(ra, rb, &lanes, per_row, true);
  });
}

// The fma kernel of this CPU's level (AVX2 implies FMA there: cpu_features.h); false at the
// baseline level, whose generic loop then adds the products.
template <bool kSquare, int NS>
bool exact_products(const float* const* a, const float* const* b, double* const* lanes, int64_t n) {
  switch (simd_level()) {
    case 2: exact_products_avx512<kSquare, NS>(a, b, lanes, n); return true;
    case 1: exact_products_avx2<kSquare, NS>(a, b, lanes, n); return true;
    default: return false;
  }
}

template <bool kSquare>
bool exact_products_rows(const float* a, const float* b, int64_t nr, int64_t per_row, double* out) {
  switch (simd_level()) {
    case 2: exact_products_rows_avx512<kSquare>(a, b, nr, per_row, out); return true;
    case 1: exact_products_rows_avx2<kSquare>(a, b, nr, per_row, out); return true;
    default: return false;
  }
}

template <typename T>
void accumulate_dot_any(const T* a, const T* b, double* lanes, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    const float* as[1] = {a};
    const float* bs[1] = {b};
    double* ls[1] = {lanes};
    if (a == b ? exact_products<true, 1>(as, bs, ls, n) : exact_products<false, 1>(as, bs, ls, n)) return;
  }
  if (a == b) {
    with_simd([&]() FS_SIMD_BODY { accumulate_dot_impl<true>(a, a, lanes, n); });
  } else {
    with_simd([&]() FS_SIMD_BODY { accumulate_dot_impl<false>(a, b, lanes, n); });
  }
}

template <typename T>
void accumulate_dot2_any(const T* a0, const T* b0, double* lanes0, const T* a1, const T* b1, double* lanes1,
                         int64_t n) {
  const bool squares = a0 == b0 && a1 == b1;
  if constexpr (std::is_same_v<T, float>) {
    const float* as[2] = {a0, a1};
    const float* bs[2] = {b0, b1};
    double* ls[2] = {lanes0, lanes1};
    if (squares ? exact_products<true, 2>(as, bs, ls, n) : exact_products<false, 2>(as, bs, ls, n)) return;
  }
  if (squares) {
    with_simd([&]() FS_SIMD_BODY { accumulate_dot2_impl<true>(a0, a0, lanes0, a1, a1, lanes1, n); });
  } else {
    with_simd([&]() FS_SIMD_BODY { accumulate_dot2_impl<false>(a0, b0, lanes0, a1, b1, lanes1, n); });
  }
}

}  // namespace

void accumulate_dot(const float* a, const float* b, double* lanes, int64_t n) { accumulate_dot_any(a, b, lanes, n); }

void accumulate_dot(const double* a, const double* b, double* lanes, int64_t n) { accumulate_dot_any(a, b, lanes, n); }

void accumulate_dot2(const float* a0, const float* b0, double* lanes0, const float* a1, const float* b1,
                     double* lanes1, int64_t n) {
  accumulate_dot2_any(a0, b0, lanes0, a1, b1, lanes1, n);
}

void accumulate_dot2(const double* a0, const double* b0, double* lanes0, const double* a1, const double* b1,
                     double* lanes1, int64_t n) {
  accumulate_dot2_any(a0, b0, lanes0, a1, b1, lanes1, n);
}

namespace {

template <typename T>
void fold_rows_any(const T* a, const T* b, int64_t nr, int64_t per_row, double* out) {
  if (per_row <= kLanes) {
    with_simd([&]() FS_SIMD_BODY { fold_short_rows_impl(a, b, nr, per_row, out); });
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    const bool done = a == b ? exact_products_rows<true>(a, a, nr, per_row, out)
                             : exact_products_rows<false>(a, b, nr, per_row, out);
    if (done) return;
  }
  if (a != b) {
    with_simd([&]() FS_SIMD_BODY { fold_lane_rows<false>(a, b, nr, per_row, out); });
  } else {
    with_simd([&]() FS_SIMD_BODY { fold_lane_rows<true>(a, a, nr, per_row, out); });
  }
}

}  // namespace

void fold_rows(const float* a, const float* b, int64_t nr, int64_t per_row, double* out) {
  fold_rows_any(a, b, nr, per_row, out);
}

void fold_rows(const double* a, const double* b, int64_t nr, int64_t per_row, double* out) {
  fold_rows_any(a, b, nr, per_row, out);
}

// Pairs laid end to end: v[2 r + k] goes to lane 2 ((first + r) % kLanes) + k — lane
// (first + r) % kLanes of sum k, as one strided sum per k would add it, but contiguous (whole
// vectors, no gathers) once the run reaches a multiple of kLanes.
void add_pairs(const double* v, int64_t first, int64_t n, double* lanes) {
  with_simd([&]() FS_SIMD_BODY { add_pairs_impl(v, first, n, lanes); });
}

void pair_totals(const double* lanes, double* total) {
  for (int k = 0; k < 2; ++k) {
    double t = 0.0;
    for (int l = 0; l < kLanes; ++l) t += lanes[2 * l + k];
    total[k] = t;
  }
}

}  // namespace fastscore
