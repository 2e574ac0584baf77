// The lane kernels of row_reduce.h, compiled for AVX-512, AVX2 and baseline x86-64
// (chosen at load): the 16 float64 lanes are two AVX-512 or four AVX2 vectors.
#include "row_reduce.h"

namespace fastscore {

__attribute__((target_clones("avx512f", "avx2", "default")))
void accumulate_dot(const float* a, const float* b, double* lanes, int64_t n) {
  for (int64_t g = 0; g < n; g += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += static_cast<double>(a[g + l]) * static_cast<double>(b[g + l]);
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void accumulate_dot(const double* a, const double* b, double* lanes, int64_t n) {
  for (int64_t g = 0; g < n; g += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += a[g + l] * b[g + l];
  }
}

}  // namespace fastscore
