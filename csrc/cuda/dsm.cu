// DSM family, CUDA: per-sample 0.5 * w * |s + z/sigma|^2 and its fused backward
// (w g) (s + z/sigma), z regenerated (see csrc/dsm.cpp for the CPU twin and the math).
// sigma and w are coefficient slots (floats or device tensors, read by the kernels);
// 1/sigma is taken in float64 and rounded once to the compute type.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

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
__device__ __forceinline__ at::opmath_type<scalar_t> inverse(const Coef& sigma, int64_t row) {
  return static_cast<at::opmath_type<scalar_t>>(fs_div(1.0, sigma.at_row(row)));
}

template <typename scalar_t>
__global__ void dsm_partial_kernel(const scalar_t* score, const at::opmath_type<scalar_t>* noise, Coef sigma,
                                   int64_t per_row, int64_t chunks_per_row, Stream s, double* partial) {
  using opmath_t = at::opmath_type<scalar_t>;
  const RowChunk c = row_chunk(per_row, chunks_per_row, kLossChunk);
  const opmath_t inv = inverse<scalar_t>(sigma, c.row);
  double acc = 0.0;
  for_each_chunk_element(stream_pos(s, per_row), c, noise == nullptr, [&](int64_t i, float z_stream) {
    const opmath_t z = noise != nullptr ? noise[i] : static_cast<opmath_t>(z_stream);
    const double d = static_cast<double>(residual(score[i], z, inv));
    acc = __dadd_rn(acc, __dmul_rn(d, d));
  });
  double sums[1] = {acc};
  block_sum<1, kThreads>(sums);
  if (threadIdx.x == 0) partial[blockIdx.x] = sums[0];
}

// loss[r] = ((0.5 * w_r) * sum of row r's partials) -> cd, the partials added in order.
template <typename out_t>
__global__ void dsm_finish_kernel(const double* partial, int64_t rows, int64_t chunks_per_row, Coef weight,
                                  out_t* loss) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += stride) {
    double sum = 0.0;
    for (int64_t c = 0; c < chunks_per_row; ++c) sum = __dadd_rn(sum, partial[r * chunks_per_row + c]);
    loss[r] = static_cast<out_t>(__dmul_rn(__dmul_rn(0.5, weight.at_row(r)), sum));
  }
}

template <typename scalar_t>
__global__ void dsm_backward_kernel(scalar_t* grad_score, const scalar_t* score, const at::opmath_type<scalar_t>* noise,
                                    Coef sigma, Coef weight, const double* grad, int64_t per_row, int64_t n,
                                    Stream s) {
  using opmath_t = at::opmath_type<scalar_t>;
  auto apply = [&](int64_t i, opmath_t z) {
    const int64_t row = i / per_row;
    const opmath_t scale = static_cast<opmath_t>(__dmul_rn(grad[row], weight.at_row(row)));
    grad_score[i] = static_cast<scalar_t>(fs_mul(scale, residual(score[i], z, inverse<scalar_t>(sigma, row))));
  };
  if (noise != nullptr) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) apply(i, noise[i]);
  } else {
    for_each_owned_element(stream_pos(s, per_row), n, [&](int64_t i, float z) { apply(i, static_cast<opmath_t>(z)); });
  }
}

void check_noise(const c10::optional<at::Tensor>& noise, const at::Tensor& score) {
  TORCH_CHECK(!noise.has_value() || (noise->sizes() == score.sizes() && noise->device() == score.device() &&
                                     noise->scalar_type() == compute_type(score.scalar_type())),
              "fastscore: noise must match score and have the compute dtype");
}

at::Tensor dsm_loss_cuda(const at::Tensor& score, double sigma, const c10::optional<at::Tensor>& sigma_t, double weight,
                         const c10::optional<at::Tensor>& weight_t, const c10::optional<at::Tensor>& noise,
                         const c10::optional<at::Tensor>& seed_t, int64_t seed,
                         const c10::optional<at::Tensor>& offset_t, int64_t offset) {
  const c10::cuda::CUDAGuard guard(score.device());
  const Stream s = make_stream(seed_t, seed, offset_t, offset, score.device());
  const auto geometry = row_geometry(score);
  const int64_t rows = geometry.first, per_row = geometry.second;
  const at::ScalarType cd = compute_type(score.scalar_type());
  if (score.numel() == 0) return at::zeros({rows}, score.options().dtype(cd));
  check_noise(noise, score);
  const Coef sig = make_coef(sigma, sigma_t, score, "sigma"), w = make_coef(weight, weight_t, score, "weight");
  const int64_t chunks_per_row = std::max<int64_t>(1, (per_row + kLossChunk - 1) / kLossChunk);
  at::Tensor partial = at::empty({rows, chunks_per_row}, score.options().dtype(at::kDouble));
  at::Tensor loss = at::empty({rows}, score.options().dtype(cd));
  const at::Tensor s_c = score.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, score.scalar_type(), "dsm_loss_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor n_c = noise.has_value() ? noise->contiguous() : at::Tensor();
    dsm_partial_kernel<scalar_t><<<static_cast<unsigned>(rows * chunks_per_row), kThreads, 0, current_stream()>>>(
        s_c.data_ptr<scalar_t>(), n_c.defined() ? n_c.data_ptr<opmath_t>() : nullptr, sig, per_row, chunks_per_row,
        s, partial.data_ptr<double>());
    dsm_finish_kernel<opmath_t><<<grid_for(rows), kThreads, 0, current_stream()>>>(
        partial.data_ptr<double>(), rows, chunks_per_row, w, loss.data_ptr<opmath_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return loss;
}

at::Tensor dsm_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& score, double sigma,
                                  const c10::optional<at::Tensor>& sigma_t, double weight,
                                  const c10::optional<at::Tensor>& weight_t, const c10::optional<at::Tensor>& noise,
                                  const c10::optional<at::Tensor>& seed_t, int64_t seed,
                                  const c10::optional<at::Tensor>& offset_t, int64_t offset) {
  const c10::cuda::CUDAGuard guard(score.device());
  const Stream s = make_stream(seed_t, seed, offset_t, offset, score.device());
  const auto geometry = row_geometry(score);
  const int64_t rows = geometry.first, per_row = geometry.second, n = score.numel();
  at::Tensor grad_score = at::empty_like(score, at::MemoryFormat::Contiguous);
  if (n == 0) return grad_score;
  TORCH_CHECK(grad.numel() == rows, "fastscore: dsm grad must have one entry per row");
  check_noise(noise, score);
  const Coef sig = make_coef(sigma, sigma_t, score, "sigma"), w = make_coef(weight, weight_t, score, "weight");
  const at::Tensor g64 = grad.to(score.device(), at::kDouble).contiguous();
  const at::Tensor s_c = score.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, score.scalar_type(), "dsm_loss_backward_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor n_c = noise.has_value() ? noise->contiguous() : at::Tensor();
    const int64_t work = n_c.defined() ? n : counter_span(n);
    dsm_backward_kernel<scalar_t><<<grid_for(work), kThreads, 0, current_stream()>>>(
        grad_score.data_ptr<scalar_t>(), s_c.data_ptr<scalar_t>(), n_c.defined() ? n_c.data_ptr<opmath_t>() : nullptr,
        sig, w, g64.data_ptr<double>(), per_row, n, s);
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
