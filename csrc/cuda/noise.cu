// Noise family, CUDA: fill_noise_ (normals) and fill_philox_ (raw words, for tests).
// The math is csrc/philox.h, whose float operations are _rn intrinsics on the device.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../op_common.h"
#include "stream.cuh"

namespace fastscore {
namespace cuda {
namespace {

template <typename scalar_t>
__global__ void noise_kernel(scalar_t* out, int64_t n, int64_t base, CounterRange range, uint32_t k0, uint32_t k1) {
  for_each_owned_element(k0, k1, base, n, range, [&](int64_t i, float z) { out[i] = static_cast<scalar_t>(z); });
}

__global__ void philox_kernel(int32_t* out, int64_t n, int64_t first, uint32_t k0, uint32_t k1) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < n; r += stride) {
    const uint64_t c = static_cast<uint64_t>(first + r);
    const PhiloxWords w = philox4x32_10(static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), k0, k1);
    out[4 * r] = static_cast<int32_t>(w.w0);
    out[4 * r + 1] = static_cast<int32_t>(w.w1);
    out[4 * r + 2] = static_cast<int32_t>(w.w2);
    out[4 * r + 3] = static_cast<int32_t>(w.w3);
  }
}

void fill_noise_cuda(at::Tensor out, const at::Tensor& seed) {
  const SeedOffset so = read_seed(seed);
  if (out.numel() == 0) return;
  at::Tensor dst = out.contiguous();
  const int64_t n = dst.numel();
  const int64_t base = so.offset * row_geometry(out).second;
  const CounterRange range = counters_for(base, n);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "fill_noise_cuda", [&] {
    noise_kernel<scalar_t><<<grid_for(range.count), kThreads, 0, current_stream()>>>(
        dst.data_ptr<scalar_t>(), n, base, range, so.k0, so.k1);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!dst.is_same(out)) out.copy_(dst);
}

void fill_philox_cuda(at::Tensor out, const at::Tensor& seed) {
  const SeedOffset so = read_seed(seed);
  TORCH_CHECK(out.dim() == 2 && out.size(1) == 4 && out.scalar_type() == at::kInt && out.is_contiguous(),
              "fastscore: fill_philox_ wants a contiguous int32 [n, 4] tensor");
  if (out.size(0) == 0) return;
  philox_kernel<<<grid_for(out.size(0)), kThreads, 0, current_stream()>>>(out.data_ptr<int32_t>(), out.size(0),
                                                                          so.offset, so.k0, so.k1);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fastscore, CUDA, m) {
  m.impl("fill_noise_", &cuda::fill_noise_cuda);
  m.impl("fill_philox_", &cuda::fill_philox_cuda);
}

}  // namespace fastscore
