// Which SIMD level the CPU kernels may use: 0 = portable, 1 = AVX2 (with FMA, which only
// row_reduce.cpp's exact sums of squares use), 2 = AVX-512 (F, VL, DQ, BW). From
// __builtin_cpu_supports (which also checks that the OS saves the AVX / AVX-512 register
// state), lowered (never raised) by FASTSCORE_CPU_KERNEL = avx512 | avx2 | scalar.
// Callers keep the answer in a function-local static: the noise stream (stream_dispatch.cpp)
// and the exact square root (exact_sqrt.cpp) choose from it once, the element loops of the
// fused ops through with_simd (below).
#pragma once
#include <cstdlib>
#include <cstring>
#include <type_traits>

namespace fastscore {

inline int cpu_simd_level() {
  __builtin_cpu_init();
  int level = 0;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) level = 1;
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

// cpu_simd_level(), read once.
inline int simd_level() {
  static const int level = cpu_simd_level();
  return level;
}

// What with_simd builds run: "avx512", "avx2" or "baseline" (python -m fastscore info).
inline const char* simd_level_name() {
  static const char* const names[] = {"baseline", "avx2", "avx512"};
  return names[simd_level()];
}

// with_simd(body) runs body() compiled for the widest level simd_level() allows, so the
// ops' element loops (built with the baseline's 4-wide SSE otherwise) run 16 or 8 floats
// a step. body is a lambda marked FS_SIMD_BODY whose loop code is inline (always_inline
// where it is more than a few lines): GCC inlines it into each wrapper below and compiles
// it once per instruction set. Lanes are independent elements, so the width changes no
// bit; no target has "fma", and setup.py's -ffp-contract=off keeps a * b + c two roundings
// on AVX-512 too (tests/test_cpu_rng.py looks for fused multiply-adds in the extension).
#define FS_SIMD_BODY __attribute__((always_inline))
#define FS_SIMD_INLINE inline __attribute__((always_inline))

namespace simd_detail {
template <typename Body>
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw"))) void run_avx512(const Body& body) {
  body();
}
template <typename Body>
__attribute__((target("avx2"))) void run_avx2(const Body& body) {
  body();
}
}  // namespace simd_detail

template <typename Body>
inline void with_simd(const Body& body) {
  switch (simd_level()) {
    case 2: simd_detail::run_avx512(body); return;
    case 1: simd_detail::run_avx2(body); return;
    default: body();
  }
}

// with_simd for loops over float or double storage; other storage types (half, bfloat16:
// their conversions are scalar code either way) run the baseline build only.
template <typename T, typename Body>
inline void with_simd_for(const Body& body) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    with_simd(body);
  } else {
    body();
  }
}

}  // namespace fastscore
