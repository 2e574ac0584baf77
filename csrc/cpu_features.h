// Which SIMD level the CPU kernels may use: 0 = portable, 1 = AVX2, 2 = AVX-512 (F, VL, DQ,
// BW). From __builtin_cpu_supports (which also checks that the OS saves the AVX / AVX-512
// register state), lowered (never raised) by FASTSCORE_CPU_KERNEL = avx512 | avx2 | scalar.
// Callers keep the answer in a function-local static: the noise stream (stream_dispatch.cpp)
// and the exact square root (exact_sqrt.cpp) choose from it once.
#pragma once
#include <cstdlib>
#include <cstring>

namespace fastscore {

inline int cpu_simd_level() {
  __builtin_cpu_init();
  int level = 0;
  if (__builtin_cpu_supports("avx2")) level = 1;
  if (level == 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
    level = 2;
  if (const char* env = std::getenv("FASTSCORE_CPU_KERNEL")) {
    int want = level;
    if (std::strcmp(env, "scalar") == 0) want = 0;
    if (std::strcmp(env, "avx2") == 0) want = 1;
    if (std::strcmp(env, "avx512") == 0) want = 2;
    if (want < level) level = want;
  }
  return level;
}

}  // namespace fastscore
