// Internal interface between the stream dispatcher (stream_dispatch.cpp) and the
// per-ISA kernels (stream_scalar.cpp, stream_avx2.cpp, stream_avx512.cpp).
// Nothing outside these four files should include it: use cpu_stream_simd.h.
//
// Every kernel starts at a counter boundary and obeys one contract:
//
//   kernel(k0, k1, c0, nv, out) writes nv >= 1 values of counters c0, c0 + 1, ...:
//   out[t] = value (t & 3) of counter c0 + (t >> 2) for t in [0, nv); the last counter
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

namespace fastscore {
namespace stream_detail {

using NormalsKernel = void (*)(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, float* out);
using WordsKernel = void (*)(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, int32_t* out);
using SignsKernel = void (*)(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, float* out);
// Box-Muller alone, for the exhaustive test: words[4*i + k] (word k of "counter" i, as
// stream_words writes them) -> out[4*i + k] (normal k of that counter); nc >= 1, any nc.
using BoxMullerKernel = void (*)(const int32_t* words, int64_t nc, float* out);

struct Kernels {
  const char* name;
  NormalsKernel normals;
  WordsKernel words;
  SignsKernel signs;
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

// Counters made in a stack buffer for a misaligned head (j0 & 3 != 0): one AVX-512
// block, two AVX2 blocks - about the cost of a single scalar counter.
constexpr int64_t kHeadCounters = 16;

}  // namespace stream_detail
}  // namespace fastscore
