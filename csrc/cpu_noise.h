// CPU side of the noise stream: the loop that feeds consecutive chunks of the stream,
// made by the SIMD generator (cpu_stream_simd.h), to an element-wise kernel. Shared by every CPU op.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

#include "cpu_stream_simd.h"
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

// Normals per chunk: 4 KiB, stays in L1; chunks of 256-2048 run at the generator's full rate.
constexpr int64_t kNoiseChunk = 1024;

// Calls fn(i, count, z) for consecutive chunks covering flat elements [begin, end), where
// z[t] is the stream at global index base + i + t, made by the SIMD generator
// (cpu_stream_simd.h) into an L1 buffer just before use. Chunk edges sit on global
// multiples of kNoiseChunk (whole vector blocks); every element is a pure function of its
// index, so results do not depend on how [0, N) is split between threads or calls.
template <typename Fn>
void for_each_noise_chunk(const HostStream& s, int64_t base, int64_t begin, int64_t end, Fn&& fn) {
  alignas(64) float z[kNoiseChunk];
  for (int64_t i = begin; i < end;) {
    const uint64_t j = static_cast<uint64_t>(base + i);
    const int64_t count = std::min<int64_t>(end - i, kNoiseChunk - static_cast<int64_t>(j & (kNoiseChunk - 1)));
    stream_normals(s.k0, s.k1, j, count, z);
    fn(i, count, static_cast<const float*>(z));
    i += count;
  }
}

// Elements per parallel task: large enough that a thread's wake-up is amortised.
constexpr int64_t kGrain = 4096;

}  // namespace fastscore
