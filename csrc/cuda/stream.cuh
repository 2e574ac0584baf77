// CUDA side of the noise stream: one thread per Philox counter, i.e. per 4 consecutive
// stream elements, in a grid-stride loop. Shared by every CUDA op; host code only
// needs launch_config() and the current stream.
#pragma once
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "../philox.h"

namespace fastscore {
namespace cuda {

constexpr int kThreads = 256;

// Counters that cover flat elements [0, n) of a tensor whose first element is global
// index base: [base >> 2, (base + n - 1) >> 2].
struct CounterRange {
  int64_t first, count;
};

inline CounterRange counters_for(int64_t base, int64_t n) {
  const int64_t first = base >> 2;
  return {first, ((base + n - 1) >> 2) - first + 1};
}

inline dim3 grid_for(int64_t count) {
  const int64_t blocks = (count + kThreads - 1) / kThreads;
  return dim3(static_cast<unsigned>(std::min<int64_t>(blocks, 65535 * 8)));
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Calls fn(i, z) for each flat element i in [0, n) this thread owns, z its noise value.
template <typename Fn>
__device__ __forceinline__ void for_each_owned_element(uint32_t k0, uint32_t k1, int64_t base, int64_t n,
                                                       CounterRange range, Fn&& fn) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < range.count; t += stride) {
    const uint64_t counter = static_cast<uint64_t>(range.first + t);
    float z[4];
    normals4(static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), k0, k1, z);
    const int64_t i0 = 4 * static_cast<int64_t>(counter) - base;
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
__device__ __forceinline__ void for_each_chunk_element(uint32_t k0, uint32_t k1, int64_t base, RowChunk c, bool draw,
                                                       Fn&& fn) {
  const int64_t c_first = (base + c.begin) >> 2, c_last = (base + c.end - 1) >> 2;
  for (int64_t counter = c_first + threadIdx.x; counter <= c_last; counter += blockDim.x) {
    float n4[4] = {0.f, 0.f, 0.f, 0.f};
    if (draw) {
      normals4(static_cast<uint32_t>(counter), static_cast<uint32_t>(static_cast<uint64_t>(counter) >> 32), k0, k1,
               n4);
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t i = 4 * counter + k - base;
      if (i >= c.begin && i < c.end) fn(i, n4[k]);
    }
  }
}

}  // namespace cuda
}  // namespace fastscore
