// CUDA side of the noise stream: one thread per Philox counter, i.e. per 4 consecutive
// stream elements, in a grid-stride loop. The seed and offset are read inside the kernel
// (from device memory when given as tensors: a captured graph replays with the new seed),
// so where element 0 sits within its counter is known only there; grids are sized by
// counter_span(n), which covers every position. Shared by every CUDA op.
#pragma once
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "../op_common.h"

namespace fastscore {
namespace cuda {

constexpr int kThreads = 256;

// Counters that n consecutive elements can touch, whatever j & 3 of the first (_common.counter_span).
inline int64_t counter_span(int64_t n) { return n > 0 ? ((n + 2) >> 2) + 1 : 0; }

inline dim3 grid_for(int64_t count) {
  const int64_t blocks = (count + kThreads - 1) / kThreads;
  return dim3(static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535 * 8))));
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// The key and the global index of element 0 of a tensor with rows of `per_row` elements.
struct StreamPos {
  uint32_t k0, k1;
  int64_t base;
};

__device__ __forceinline__ StreamPos stream_pos(const Stream& s, int64_t per_row) {
  return {s.k0(), s.k1(), s.offset.get() * per_row};
}

// Calls fn(i, z) for each flat element i in [0, n) this thread owns, z its noise value.
template <typename Fn>
__device__ __forceinline__ void for_each_owned_element(const StreamPos& p, int64_t n, Fn&& fn) {
  const int64_t first = p.base >> 2, count = ((p.base + n - 1) >> 2) - first + 1;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < count; t += stride) {
    const uint64_t counter = static_cast<uint64_t>(first + t);
    float z[4];
    normals4(static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), p.k0, p.k1, z);
    const int64_t i0 = 4 * static_cast<int64_t>(counter) - p.base;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t i = i0 + k;
      if (i >= 0 && i < n) fn(i, z[k]);
    }
  }
}

// The chunk of a per-row reduction that thread block blockIdx.x covers: row
// blockIdx.x / chunks_per_row, flat elements [begin, end), at most `chunk` of them.
struct RowChunk {
  int64_t row, begin, end;
};

__device__ __forceinline__ RowChunk row_chunk(int64_t per_row, int64_t chunks_per_row, int64_t chunk) {
  const int64_t row = blockIdx.x / chunks_per_row;
  const int64_t begin = row * per_row + (blockIdx.x % chunks_per_row) * chunk;
  return {row, begin, min(row * per_row + per_row, begin + chunk)};
}

// Calls fn(i, z) for the elements of [c.begin, c.end) this thread owns. Threads walk
// Philox counters (4 stream elements each), so each normal is drawn once; z is the stream
// at base + i, or 0 when `draw` is false (the caller reads an explicit noise tensor).
template <typename Fn>
__device__ __forceinline__ void for_each_chunk_element(const StreamPos& p, RowChunk c, bool draw, Fn&& fn) {
  if (c.begin >= c.end) return;
  const int64_t c_first = (p.base + c.begin) >> 2, c_last = (p.base + c.end - 1) >> 2;
  for (int64_t counter = c_first + threadIdx.x; counter <= c_last; counter += blockDim.x) {
    float n4[4] = {0.f, 0.f, 0.f, 0.f};
    if (draw) {
      normals4(static_cast<uint32_t>(counter), static_cast<uint32_t>(static_cast<uint64_t>(counter) >> 32), p.k0,
               p.k1, n4);
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t i = 4 * counter + k - p.base;
      if (i >= c.begin && i < c.end) fn(i, n4[k]);
    }
  }
}

}  // namespace cuda
}  // namespace fastscore
