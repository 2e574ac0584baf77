// The lane and row kernels of row_reduce.h, built for AVX-512, AVX2 and baseline x86-64
// and chosen by with_simd (cpu_features.h, as the ops' element loops): the 16 float64
// lanes are two AVX-512 or four AVX2 vectors. __restrict: the lanes stay in registers.
#include "row_reduce.h"

namespace fastscore {
namespace {

template <typename T>
FS_SIMD_INLINE void accumulate_dot_impl(const T* __restrict a, const T* __restrict b, double* __restrict lanes,
                                        int64_t n) {
  for (int64_t g = 0; g < n; g += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += static_cast<double>(a[g + l]) * static_cast<double>(b[g + l]);
  }
}

// Two sums in one pass: twice accumulate_dot's independent add chains (its loop waits on
// the adds' latency), each lane added in the same order, so the same bits.
template <typename T>
FS_SIMD_INLINE void accumulate_dot2_impl(const T* __restrict a0, const T* __restrict b0, double* __restrict lanes0,
                                 const T* __restrict a1, const T* __restrict b1, double* __restrict lanes1,
                                 int64_t n) {
  for (int64_t g = 0; g < n; g += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes0[l] += static_cast<double>(a0[g + l]) * static_cast<double>(b0[g + l]);
    for (int l = 0; l < kLanes; ++l) lanes1[l] += static_cast<double>(a1[g + l]) * static_cast<double>(b1[g + l]);
  }
}

// Rows of R <= kLanes elements: out[q * stride] = sum_t a[q R + t] * b[q R + t] in order
// (each lane holds one product), for q < nr.
template <typename T, int R>
FS_SIMD_INLINE void fold_rows(const T* a, const T* b, int64_t nr, double* out, int64_t stride) {
  for (int64_t q = 0; q < nr; ++q) {
    double total = 0.0;
    for (int t = 0; t < R; ++t) total += static_cast<double>(a[q * R + t]) * static_cast<double>(b[q * R + t]);
    out[q * stride] = total;
  }
}

template <typename T>
FS_SIMD_INLINE void fold_short_rows_impl(const T* a, const T* b, int64_t nr, int64_t per_row, double* out,
                                         int64_t stride) {
  switch (per_row) {  // the shortest rows (2-D, 3-D batches) with unrolled row loops
    case 1: return fold_rows<T, 1>(a, b, nr, out, stride);
    case 2: return fold_rows<T, 2>(a, b, nr, out, stride);
    case 3: return fold_rows<T, 3>(a, b, nr, out, stride);
    case 4: return fold_rows<T, 4>(a, b, nr, out, stride);
    default:
      for (int64_t q = 0; q < nr; ++q) {
        double total = 0.0;
        for (int64_t t = 0; t < per_row; ++t) {
          total += static_cast<double>(a[q * per_row + t]) * static_cast<double>(b[q * per_row + t]);
        }
        out[q * stride] = total;
      }
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

}  // namespace

void accumulate_dot(const float* a, const float* b, double* lanes, int64_t n) {
  with_simd([&]() FS_SIMD_BODY { accumulate_dot_impl(a, b, lanes, n); });
}

void accumulate_dot(const double* a, const double* b, double* lanes, int64_t n) {
  with_simd([&]() FS_SIMD_BODY { accumulate_dot_impl(a, b, lanes, n); });
}

void accumulate_dot2(const float* a0, const float* b0, double* lanes0, const float* a1, const float* b1,
                     double* lanes1, int64_t n) {
  with_simd([&]() FS_SIMD_BODY { accumulate_dot2_impl(a0, b0, lanes0, a1, b1, lanes1, n); });
}

void accumulate_dot2(const double* a0, const double* b0, double* lanes0, const double* a1, const double* b1,
                     double* lanes1, int64_t n) {
  with_simd([&]() FS_SIMD_BODY { accumulate_dot2_impl(a0, b0, lanes0, a1, b1, lanes1, n); });
}

void fold_short_rows(const float* a, const float* b, int64_t nr, int64_t per_row, double* out, int64_t stride) {
  with_simd([&]() FS_SIMD_BODY { fold_short_rows_impl(a, b, nr, per_row, out, stride); });
}

void fold_short_rows(const double* a, const double* b, int64_t nr, int64_t per_row, double* out, int64_t stride) {
  with_simd([&]() FS_SIMD_BODY { fold_short_rows_impl(a, b, nr, per_row, out, stride); });
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
