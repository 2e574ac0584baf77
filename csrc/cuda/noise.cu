// Noise family, CUDA: fill_noise_ (normals or Rademacher signs), fill_philox_ (raw words),
// fill_labels_ (a level index per counter) and derive_seeds (the step seeds of a run). The
// math is csrc/philox.h, whose float operations are _rn intrinsics on the device.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "stream.cuh"

namespace fastscore {
namespace cuda {
namespace {

template <typename scalar_t>
__global__ void noise_kernel(scalar_t* out, int64_t n, int64_t per_row, Stream s) {
  for_each_owned_element(stream_pos(s, per_row), n, [&](int64_t i, float z) { out[i] = static_cast<scalar_t>(z); });
}

template <typename scalar_t>
__global__ void signs_kernel(scalar_t* out, int64_t n, int64_t per_row, Stream s) {
  const StreamPos p = stream_pos(s, per_row);
  const int64_t first = p.base >> 2, count = ((p.base + n - 1) >> 2) - first + 1;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < count; t += stride) {
    const uint64_t c = static_cast<uint64_t>(first + t);
    const PhiloxWords w = philox4x32_10(static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), p.k0, p.k1);
    const uint32_t words[4] = {w.w0, w.w1, w.w2, w.w3};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t i = 4 * static_cast<int64_t>(c) + k - p.base;
      if (i >= 0 && i < n) out[i] = static_cast<scalar_t>(rademacher_of_word(words[k]));
    }
  }
}

__global__ void philox_kernel(int32_t* out, int64_t n, int64_t first, Stream s) {
  const uint32_t k0 = s.k0(), k1 = s.k1();
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

__global__ void labels_kernel(int64_t* out, int64_t n, int64_t first, int64_t n_levels, Stream s) {
  const uint32_t k0 = s.k0(), k1 = s.k1();
  const double levels = static_cast<double>(n_levels);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < n; r += stride) {
    const uint64_t c = static_cast<uint64_t>(first + r);
    const PhiloxWords w = philox4x32_10(static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), k0, k1);
    const double v = __dmul_rn(static_cast<double>(uniform_f32(w.w0)), levels);
    out[r] = min(static_cast<int64_t>(v), n_levels - 1);
  }
}

__global__ void derive_seeds_kernel(int64_t* out, int64_t n, KernelInt seed) {
  const uint64_t s = static_cast<uint64_t>(seed.get());
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride) {
    out[k] = static_cast<int64_t>(derive_seed(s, static_cast<uint64_t>(k)));
  }
}

void fill_noise_cuda(at::Tensor out, int64_t dist, const c10::optional<at::Tensor>& seed_t, int64_t seed,
                     const c10::optional<at::Tensor>& offset_t, int64_t offset) {
  TORCH_CHECK(dist == 0 || dist == 1, "fastscore: dist must be 0 (gaussian) or 1 (rademacher)");
  const c10::cuda::CUDAGuard guard(out.device());
  const Stream s = make_stream(seed_t, seed, offset_t, offset, out.device());
  if (out.numel() == 0) return;
  at::Tensor dst = out.contiguous();
  const int64_t n = dst.numel(), per_row = row_geometry(out).second;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "fill_noise_cuda", [&] {
    if (dist == 0) {
      noise_kernel<scalar_t><<<grid_for(counter_span(n)), kThreads, 0, current_stream()>>>(
          dst.data_ptr<scalar_t>(), n, per_row, s);
    } else {
      signs_kernel<scalar_t><<<grid_for(counter_span(n)), kThreads, 0, current_stream()>>>(
          dst.data_ptr<scalar_t>(), n, per_row, s);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!dst.is_same(out)) out.copy_(dst);
}

void fill_philox_cuda(at::Tensor out, const c10::optional<at::Tensor>& seed_t, int64_t seed, int64_t counter) {
  TORCH_CHECK(out.dim() == 2 && out.size(1) == 4 && out.scalar_type() == at::kInt && out.is_contiguous(),
              "fastscore: fill_philox_ wants a contiguous int32 [n, 4] tensor");
  const c10::cuda::CUDAGuard guard(out.device());
  const Stream s = make_stream(seed_t, seed, c10::nullopt, 0, out.device());
  if (out.size(0) == 0) return;
  philox_kernel<<<grid_for(out.size(0)), kThreads, 0, current_stream()>>>(out.data_ptr<int32_t>(), out.size(0),
                                                                          counter, s);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void fill_labels_cuda(at::Tensor out, int64_t n_levels, const c10::optional<at::Tensor>& seed_t, int64_t seed,
                      int64_t counter) {
  TORCH_CHECK(out.dim() == 1 && out.scalar_type() == at::kLong && out.is_contiguous(),
              "fastscore: fill_labels_ wants a contiguous int64 [n] tensor");
  TORCH_CHECK(n_levels >= 1 && n_levels <= (int64_t{1} << 53), "fastscore: n_levels must be in [1, 2**53]");
  const c10::cuda::CUDAGuard guard(out.device());
  const Stream s = make_stream(seed_t, seed, c10::nullopt, 0, out.device());
  if (out.size(0) == 0) return;
  labels_kernel<<<grid_for(out.size(0)), kThreads, 0, current_stream()>>>(out.data_ptr<int64_t>(), out.size(0),
                                                                          counter, n_levels, s);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor derive_seeds_cuda(const at::Tensor& seed, int64_t n) {
  TORCH_CHECK(n >= 0, "fastscore: n must be >= 0");
  const c10::cuda::CUDAGuard guard(seed.device());
  at::Tensor out = at::empty({n}, seed.options().dtype(at::kLong));
  if (n == 0) return out;
  derive_seeds_kernel<<<grid_for(n), kThreads, 0, current_stream()>>>(out.data_ptr<int64_t>(), n,
                                                                       kernel_int(seed, 0, seed.device(), "seed"));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fastscore, CUDA, m) {
  m.impl("fill_noise_", &cuda::fill_noise_cuda);
  m.impl("fill_philox_", &cuda::fill_philox_cuda);
  m.impl("fill_labels_", &cuda::fill_labels_cuda);
  m.impl("derive_seeds", &cuda::derive_seeds_cuda);
}

}  // namespace fastscore
