// CPU side of the noise stream: the vectorised tile generators and the loop that feeds
// consecutive tiles of the stream to an element-wise kernel. Shared by every CPU op.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

#include "op_common.h"

namespace fastscore {

// A stream position with everything read: CPU ops see seed and offset tensors that live
// in host memory, so kernel_int() already turned them into values.
struct HostStream {
  uint32_t k0, k1;
  int64_t offset;
};

inline HostStream host_stream(const Stream& s) {
  TORCH_CHECK(s.seed.ptr == nullptr && s.offset.ptr == nullptr, "fastscore: CPU ops take CPU seed/offset tensors");
  return {s.k0(), s.k1(), s.offset.value};
}

// Counters per tile; a tile holds 4x as many normals (1 KiB, stays in L1).
constexpr int64_t kTileCounters = 64;
constexpr int64_t kTileNormals = 4 * kTileCounters;

// out[0 .. kTileNormals) = the stream at global indices 4*counter .. 4*counter + 255
// (normals; or Rademacher signs). Defined in noise.cpp, compiled for AVX-512, AVX2 and
// baseline x86-64 (picked at load).
void normals_tile(uint32_t k0, uint32_t k1, uint64_t counter, float* out);
void signs_tile(uint32_t k0, uint32_t k1, uint64_t counter, float* out);

// The tile of 256 normals starting at `counter` (a multiple of kTileCounters), from a
// per-thread cache of the last tile made: ops over short rows (a 2-D batch, per-row
// reductions) ask for the same tile many times in a row. Keyed by (key, counter), so a
// hit returns exactly what normals_tile would.
inline const float* cached_tile(uint32_t k0, uint32_t k1, uint64_t counter) {
  struct Cache {
    uint32_t k0 = 0, k1 = 0;
    uint64_t counter = 0;
    bool valid = false;
    alignas(64) float buf[kTileNormals];
  };
  thread_local Cache cache;
  if (!cache.valid || cache.counter != counter || cache.k0 != k0 || cache.k1 != k1) {
    normals_tile(k0, k1, counter, cache.buf);
    cache.k0 = k0;
    cache.k1 = k1;
    cache.counter = counter;
    cache.valid = true;
  }
  return cache.buf;
}

// Calls fn(i, count, z) for consecutive ranges covering flat elements [begin, end),
// where z[t] is the stream at global index base + i + t. Tiles are aligned to
// kTileCounters counters; elements are independent, so the result does not depend on
// how [0, N) is split between threads.
template <typename Fn>
void for_each_noise_tile(const HostStream& s, int64_t base, int64_t begin, int64_t end, Fn&& fn) {
  int64_t i = begin;
  while (i < end) {
    const int64_t j = base + i;
    const int64_t counter = (j >> 2) & ~(kTileCounters - 1);
    const float* tile = cached_tile(s.k0, s.k1, static_cast<uint64_t>(counter));
    const int64_t first = j - 4 * counter;
    const int64_t count = std::min<int64_t>(end - i, kTileNormals - first);
    fn(i, count, tile + first);
    i += count;
  }
}

// Elements per parallel task: large enough that a thread's wake-up is amortised.
constexpr int64_t kGrain = 4096;

}  // namespace fastscore
