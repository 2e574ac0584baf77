// Internal interface between the stream dispatcher (stream_dispatch.cpp) and the
// per-ISA kernels (stream_scalar.cpp, stream_avx2.cpp, stream_avx512.cpp).
// Nothing outside these four files should include it: use cpu_stream_simd.h.
//
// Every kernel starts at a counter boundary and obeys one contract:
//
//   kernel(k0, k1, c0, nv, out) writes nv >= 1 values of counters c0, c0 + 1, ...:
//   out[t] = value (t & 3) of counter c0 + (t >> 2) for t in [0, nv) (the update kernel:
//   u.out[t] = the update of u.x[t], u.y[t] and that value); the last counter
//   may be partial (nv need not be a multiple of 4). The caller guarantees that the low
//   counter word does not wrap inside: (c0 & 0xFFFFFFFF) + ceil(nv / 4) <= 2^32, so
//   c_hi = c0 >> 32 is the same for every counter touched.
//
// SIMD kernels write whole vector blocks straight into `out` and make the last partial
// block (fewer than 4 * lanes values) in a stack buffer, then copy it. The dispatcher
// splits requests at 2^32 counter boundaries and at the 2^64 wrap of the element index,
// and makes a misaligned head (j0 & 3 != 0) from one small kernel call into a stack
// buffer. `out` needs no alignment.
#pragma once
#include <cstdint>

#include "cpu_stream_simd.h"

namespace fastscore {
namespace stream_detail {

using NormalsKernel = void (*)(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, float* out);
using WordsKernel = void (*)(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, int32_t* out);
using SignsKernel = void (*)(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, float* out);

// The fused update kernel (StreamUpdate: cpu_stream_simd.h). The SIMD kernels apply it to
// each vector of normals in registers.
using UpdateKernel = void (*)(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, const StreamUpdate& u);

// The update kernels prefetch x and y this many values ahead of their loads (past the
// end of x is harmless: a prefetch never faults). The hardware prefetchers stop at 4 KiB
// pages, and a page of x is ~0.6 us of generating: for arrays beyond L2 the update took
// 1.22-1.25x the generator's time without, 1.13-1.15x with (one core, 1.5 M values, AVX-512).
constexpr int kUpdatePrefetchAhead = 1024;

// Whether the SIMD update may take x for a * x (unit_product_exact: cpu_stream_simd.h).
// One multiply less per vector: the update's work beside the generator's, 1.18x ->
// 1.11-1.13x the generator's time (langevin_step_, 64x3x32x32, AVX-512, 2 threads;
// README, session 14).
inline bool skips_unit_product(float a) { return a == 1.0f && unit_product_exact(); }

// The operands of values t.. of `u`.
inline StreamUpdate shifted(const StreamUpdate& u, int64_t t) {
  return {u.out + t, u.x + t, u.y != nullptr ? u.y + t : nullptr, u.a, u.b, u.c};
}

// The update of n values from normals z already made (heads and partial blocks).
inline void update_from(const StreamUpdate& u, const float* z, int64_t n) {
  for (int64_t t = 0; t < n; ++t) {
    float m = u.a * u.x[t];
    if (u.y != nullptr) m = m + u.b * u.y[t];
    u.out[t] = m + u.c * z[t];
  }
}

// Box-Muller alone, for the exhaustive test: words[4*i + k] (word k of "counter" i, as
// stream_words writes them) -> out[4*i + k] (normal k of that counter); nc >= 1, any nc.
using BoxMullerKernel = void (*)(const int32_t* words, int64_t nc, float* out);

struct Kernels {
  const char* name;
  NormalsKernel normals;
  WordsKernel words;
  SignsKernel signs;
  UpdateKernel update;
  BoxMullerKernel box_muller;  // testing only
};

// Portable kernels (philox.h, auto-vectorised at the baseline ISA). Always available.
Kernels scalar_kernels();
// Explicit-SIMD kernels. Defined in files whose functions carry their own target
// attribute, so they can be compiled with the project's ordinary flags; call them only
// when the CPU has the features (the dispatcher checks __builtin_cpu_supports).
Kernels avx2_kernels();
Kernels avx512_kernels();

// The range logic of the public API (cpu_stream_simd.h) run with a given kernel set:
// split at the 2^64 wrap of the element index and at every 2^32 boundary of the
// counter, a misaligned head through a stack buffer, the rest straight to the kernel.
// The public functions call these with the dispatched set; tests call them with each
// set this CPU can run.
void normals_with(const Kernels& ks, uint32_t k0, uint32_t k1, uint64_t j0, int64_t n, float* out);
void words_with(const Kernels& ks, uint32_t k0, uint32_t k1, uint64_t c0, int64_t n, int32_t* out);
void signs_with(const Kernels& ks, uint32_t k0, uint32_t k1, uint64_t j0, int64_t n, float* out);
void update_with(const Kernels& ks, uint32_t k0, uint32_t k1, uint64_t j0, int64_t n, const StreamUpdate& u);

// Counters made in a stack buffer for a misaligned head (j0 & 3 != 0): one AVX-512
// block, two AVX2 blocks - about the cost of a single scalar counter.
constexpr int64_t kHeadCounters = 16;

}  // namespace stream_detail
}  // namespace fastscore
