// Block-wide float64 sums for the CUDA reductions (corrector norms, DSM loss, sliced
// score matching): a fixed tree over the block's threads, explicit round-to-nearest
// adds, so the bits of a partial sum depend on the data only.
#pragma once
#include <cuda_runtime.h>

namespace fastscore {
namespace cuda {

// vals[n] of every thread summed over the block (blockDim.x == Threads); thread 0 holds
// the totals on return.
template <int N, int Threads>
__device__ __forceinline__ void block_sum(double (&vals)[N]) {
  __shared__ double sh[N][Threads];
#pragma unroll
  for (int n = 0; n < N; ++n) sh[n][threadIdx.x] = vals[n];
  __syncthreads();
  for (int width = Threads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) {
#pragma unroll
      for (int n = 0; n < N; ++n) sh[n][threadIdx.x] = __dadd_rn(sh[n][threadIdx.x], sh[n][threadIdx.x + width]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int n = 0; n < N; ++n) vals[n] = sh[n][0];
}

}  // namespace cuda
}  // namespace fastscore
