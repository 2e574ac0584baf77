// Corrector family, CUDA: score_sde's LangevinCorrector step in two passes, noise
// regenerated, never stored (see csrc/corrector.cpp for the CPU twin).
//   pass 1: one thread block per (row, chunk of the row) reduces |score|^2 and |z|^2 in
//           float64 into partial sums;
//   rule:   one thread block finishes the row sums and applies op_common.h's step-size
//           rule (batch means by a fixed-order tree), writing (eps, sqrt(2 eps)) per row
//           to the device: nothing is read on the host;
//   pass 2: the update kernel with those per-row coefficients.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "reduce.cuh"
#include "step_cuda.h"
#include "stream.cuh"

namespace fastscore {
namespace cuda {
namespace {

constexpr int64_t kNormChunk = 4 * kThreads * 16;  // elements per thread block

template <typename scalar_t, typename noise_t>
__global__ void sq_norms_kernel(const scalar_t* score, const noise_t* noise, int64_t per_row, int64_t chunks_per_row,
                                Stream s, double* partial) {
  double ss = 0.0, zz = 0.0;
  for_each_chunk_element(stream_pos(s, per_row), row_chunk(per_row, chunks_per_row, kNormChunk), noise == nullptr,
                         [&](int64_t i, float z_stream) {
                           const double sv = static_cast<double>(score[i]);
                           const double z = noise != nullptr ? static_cast<double>(noise[i]) : z_stream;
                           ss = __dadd_rn(ss, __dmul_rn(sv, sv));
                           zz = __dadd_rn(zz, __dmul_rn(z, z));
                         });
  double sums[2] = {ss, zz};
  block_sum<2, kThreads>(sums);
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = sums[0];
    partial[2 * blockIdx.x + 1] = sums[1];
  }
}

// One block: coef[0, r] = eps_r, coef[1, r] = sqrt(2 eps_r).
__global__ void step_size_kernel(const double* partial, int64_t rows, int64_t chunks_per_row, double snr, Coef alpha,
                                 bool per_sample, double* coef) {
  auto norms = [&](int64_t r, double* g, double* n) {
    double ss = 0.0, zz = 0.0;
    for (int64_t c = 0; c < chunks_per_row; ++c) {
      ss = __dadd_rn(ss, partial[2 * (r * chunks_per_row + c)]);
      zz = __dadd_rn(zz, partial[2 * (r * chunks_per_row + c) + 1]);
    }
    *g = __dsqrt_rn(ss);
    *n = __dsqrt_rn(zz);
  };
  double mean[2] = {0.0, 0.0};
  if (!per_sample) {  // batch means of the norms, as score_sde and diffusers
    for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
      double g, n;
      norms(r, &g, &n);
      mean[0] = __dadd_rn(mean[0], g);
      mean[1] = __dadd_rn(mean[1], n);
    }
    block_sum<2, kThreads>(mean);
    mean[0] = __ddiv_rn(mean[0], static_cast<double>(rows));
    mean[1] = __ddiv_rn(mean[1], static_cast<double>(rows));
  }
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    double g = mean[0], n = mean[1];
    if (per_sample) norms(r, &g, &n);
    const double eps = corrector_eps(g, n, snr, alpha.at_row(r));
    coef[r] = eps;
    coef[rows + r] = __dsqrt_rn(__dmul_rn(eps, 2.0));
  }
}

void langevin_corrector_cuda(at::Tensor x, const c10::optional<at::Tensor>& x_mean, const at::Tensor& score,
                             double snr, double alpha, const c10::optional<at::Tensor>& alpha_t, bool per_sample,
                             const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& seed_t,
                             int64_t seed, const c10::optional<at::Tensor>& offset_t, int64_t offset) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Stream s = make_stream(seed_t, seed, offset_t, offset, x.device());
  if (x.numel() == 0) return;
  const Coef alpha_c = make_coef(alpha, alpha_t, x, "alpha");
  UpdateTensors t = make_update_tensors(x, x_mean, x, {score}, noise);
  const auto geometry = row_geometry(x);
  const int64_t rows = geometry.first, per_row = geometry.second;
  const int64_t chunks_per_row = std::max<int64_t>(1, (per_row + kNormChunk - 1) / kNormChunk);
  at::Tensor partial = at::empty({rows, chunks_per_row, 2}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "corrector_norms_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    sq_norms_kernel<scalar_t, opmath_t><<<static_cast<unsigned>(rows * chunks_per_row), kThreads, 0,
                                          current_stream()>>>(
        t.ys[0].data_ptr<scalar_t>(), t.noise.defined() ? t.noise.data_ptr<opmath_t>() : nullptr, per_row,
        chunks_per_row, s, partial.data_ptr<double>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor coef = at::empty({2, rows}, x.options().dtype(at::kDouble));
  step_size_kernel<<<1, kThreads, 0, current_stream()>>>(partial.data_ptr<double>(), rows, chunks_per_row, snr,
                                                          alpha_c, per_sample, coef.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  update_cuda_run(t, corrector_update_coefs(coef.data_ptr<double>(), rows, x_mean.has_value()), s);
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fastscore, CUDA, m) { m.impl("langevin_corrector_", &cuda::langevin_corrector_cuda); }

}  // namespace fastscore
