// DSM family, CUDA: per-sample 0.5 * w * |s + z/sigma|^2 and its fused backward
// (w g) (s + z/sigma), z regenerated (see csrc/dsm.cpp for the CPU twin and the math).
// coef: float64 [2, K] on the device, rows (1/sigma, w).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../op_common.h"
#include "reduce.cuh"
#include "stream.cuh"

namespace fastscore {
namespace cuda {
namespace {

constexpr int64_t kLossChunk = 4 * kThreads * 16;  // elements per thread block in the forward

template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> residual(scalar_t s, at::opmath_type<scalar_t> z,
                                                              at::opmath_type<scalar_t> inv_sigma) {
  return fs_add(static_cast<at::opmath_type<scalar_t>>(s), fs_mul(z, inv_sigma));
}

template <typename scalar_t>
__global__ void dsm_partial_kernel(const scalar_t* score, const at::opmath_type<scalar_t>* noise, const double* coef,
                                   int64_t coef_stride, int64_t per_row, int64_t chunks_per_row, int64_t base,
                                   uint32_t k0, uint32_t k1, double* partial) {
  using opmath_t = at::opmath_type<scalar_t>;
  const RowChunk c = row_chunk(per_row, chunks_per_row, kLossChunk);
  const opmath_t inv = static_cast<opmath_t>(coef[coef_stride == 1 ? 0 : c.row]);
  double acc = 0.0;
  for_each_chunk_element(k0, k1, base, c, noise == nullptr, [&](int64_t i, float z_stream) {
    const opmath_t z = noise != nullptr ? noise[i] : static_cast<opmath_t>(z_stream);
    const double d = static_cast<double>(residual(score[i], z, inv));
    acc = __dadd_rn(acc, __dmul_rn(d, d));
  });
  double sums[1] = {acc};
  block_sum<1, kThreads>(sums);
  if (threadIdx.x == 0) partial[blockIdx.x] = sums[0];
}

template <typename scalar_t>
__global__ void dsm_backward_kernel(scalar_t* grad_score, const scalar_t* score, const at::opmath_type<scalar_t>* noise,
                                    const double* coef, int64_t coef_stride, const double* grad, int64_t per_row,
                                    int64_t n, int64_t base, CounterRange range, uint32_t k0, uint32_t k1) {
  using opmath_t = at::opmath_type<scalar_t>;
  auto apply = [&](int64_t i, opmath_t z) {
    const int64_t row = i / per_row, k = coef_stride == 1 ? 0 : row;
    const opmath_t scale = static_cast<opmath_t>(__dmul_rn(grad[row], coef[coef_stride + k]));
    grad_score[i] = static_cast<scalar_t>(fs_mul(scale, residual(score[i], z, static_cast<opmath_t>(coef[k]))));
  };
  if (noise != nullptr) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) apply(i, noise[i]);
  } else {
    for_each_owned_element(k0, k1, base, n, range, [&](int64_t i, float z) { apply(i, static_cast<opmath_t>(z)); });
  }
}

at::Tensor dsm_loss_cuda(const at::Tensor& score, const at::Tensor& coef, const at::Tensor& seed,
                         const c10::optional<at::Tensor>& noise) {
  const SeedOffset so = read_seed(seed);
  const auto geometry = row_geometry(score);
  const int64_t rows = geometry.first, per_row = geometry.second;
  const at::ScalarType cd = score.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (score.numel() == 0) return at::zeros({rows}, score.options().dtype(cd));
  const at::Tensor c = checked_dsm_coef(coef, score);
  const int64_t chunks_per_row = std::max<int64_t>(1, (per_row + kLossChunk - 1) / kLossChunk);
  at::Tensor partial = at::empty({rows, chunks_per_row}, score.options().dtype(at::kDouble));
  const at::Tensor s_c = score.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, score.scalar_type(), "dsm_loss_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    check_like(noise, score, c10::CppTypeToScalarType<opmath_t>::value, "noise");
    const at::Tensor n_c = noise.has_value() ? noise->contiguous() : at::Tensor();
    dsm_partial_kernel<scalar_t><<<static_cast<unsigned>(rows * chunks_per_row), kThreads, 0, current_stream()>>>(
        s_c.data_ptr<scalar_t>(), n_c.defined() ? n_c.data_ptr<opmath_t>() : nullptr, c.data_ptr<double>(), c.size(1),
        per_row, chunks_per_row, so.offset * per_row, so.k0, so.k1, partial.data_ptr<double>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // 0.5 * w * sum, in the reference's order, on the device.
  return c.select(0, 1).mul(0.5).mul(partial.sum(1)).to(cd);
}

at::Tensor dsm_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& score, const at::Tensor& coef,
                                  const at::Tensor& seed, const c10::optional<at::Tensor>& noise) {
  const SeedOffset so = read_seed(seed);
  const auto geometry = row_geometry(score);
  const int64_t per_row = geometry.second, n = score.numel();
  at::Tensor grad_score = at::empty_like(score, at::MemoryFormat::Contiguous);
  if (n == 0) return grad_score;
  const at::Tensor c = checked_dsm_coef(coef, score);
  const at::Tensor g64 = grad.to(score.device(), at::kDouble).contiguous();
  const at::Tensor s_c = score.contiguous();
  const int64_t base = so.offset * per_row;
  const CounterRange range = counters_for(base, n);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, score.scalar_type(), "dsm_loss_backward_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    check_like(noise, score, c10::CppTypeToScalarType<opmath_t>::value, "noise");
    const at::Tensor n_c = noise.has_value() ? noise->contiguous() : at::Tensor();
    const int64_t work = n_c.defined() ? n : range.count;
    dsm_backward_kernel<scalar_t><<<grid_for(work), kThreads, 0, current_stream()>>>(
        grad_score.data_ptr<scalar_t>(), s_c.data_ptr<scalar_t>(), n_c.defined() ? n_c.data_ptr<opmath_t>() : nullptr,
        c.data_ptr<double>(), c.size(1), g64.data_ptr<double>(), per_row, n, base, range, so.k0, so.k1);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_score;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fastscore, CUDA, m) {
  m.impl("dsm_loss", &cuda::dsm_loss_cuda);
  m.impl("dsm_loss_backward", &cuda::dsm_loss_backward_cuda);
}

}  // namespace fastscore
