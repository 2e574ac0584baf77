// Corrector family, CUDA: score_sde's LangevinCorrector step in two passes, noise
// regenerated, never stored (see csrc/corrector.cpp for the CPU twin).
//   pass 1: one thread block per (row, chunk of the row) reduces |score|^2 and |z|^2 in
//           float64 into partial sums; ATen finishes the sums and the step size on the
//           device (no host sync), in reference.corrector_step_size's operation order;
//   pass 2: the step kernel with per-row (1, eps, sqrt(2 eps)).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../op_common.h"
#include "reduce.cuh"
#include "step_cuda.h"
#include "stream.cuh"

namespace fastscore {
namespace cuda {
namespace {

constexpr int64_t kNormChunk = 4 * kThreads * 16;  // elements per thread block

template <typename scalar_t, typename noise_t>
__global__ void sq_norms_kernel(const scalar_t* score, const noise_t* noise, int64_t per_row, int64_t chunks_per_row,
                                int64_t base, uint32_t k0, uint32_t k1, double* partial) {
  double ss = 0.0, zz = 0.0;
  for_each_chunk_element(k0, k1, base, row_chunk(per_row, chunks_per_row, kNormChunk), noise == nullptr,
                         [&](int64_t i, float z_stream) {
                           const double s = static_cast<double>(score[i]);
                           const double z = noise != nullptr ? static_cast<double>(noise[i]) : z_stream;
                           ss = __dadd_rn(ss, __dmul_rn(s, s));
                           zz = __dadd_rn(zz, __dmul_rn(z, z));
                         });
  double sums[2] = {ss, zz};
  block_sum<2, kThreads>(sums);
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = sums[0];
    partial[2 * blockIdx.x + 1] = sums[1];
  }
}

void corrector_impl(at::Tensor& x, const at::Tensor& score, const at::Tensor& alpha, double snr, const SeedOffset& so,
                    bool per_sample, const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& x_mean) {
  if (x.numel() == 0) return;
  check_like(score, x, x.scalar_type(), "score");
  const auto geometry = row_geometry(x);
  const int64_t rows = geometry.first, per_row = geometry.second;
  const int64_t chunks_per_row = std::max<int64_t>(1, (per_row + kNormChunk - 1) / kNormChunk);
  const at::Tensor score_c = score.contiguous();
  at::Tensor partial = at::empty({rows, chunks_per_row, 2}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "corrector_norms_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    check_like(noise, x, c10::CppTypeToScalarType<opmath_t>::value, "noise");
    const at::Tensor noise_c = noise.has_value() ? noise->contiguous() : at::Tensor();
    sq_norms_kernel<scalar_t, opmath_t><<<static_cast<unsigned>(rows * chunks_per_row), kThreads, 0,
                                          current_stream()>>>(
        score_c.data_ptr<scalar_t>(), noise_c.defined() ? noise_c.data_ptr<opmath_t>() : nullptr, per_row,
        chunks_per_row, so.offset * per_row, so.k0, so.k1, partial.data_ptr<double>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor sums = partial.sum(1);  // [rows, 2]
  at::Tensor g = sums.select(1, 0).sqrt(), n = sums.select(1, 1).sqrt();
  if (!per_sample) {
    g = g.mean();
    n = n.mean();
  }
  const at::Tensor positive = g > 0;
  const at::Tensor ratio = at::where(positive, n.mul(snr).div(at::where(positive, g, at::ones_like(g))),
                                     at::zeros_like(g));
  const at::Tensor eps = ratio.mul(ratio).mul(2.0).mul(alpha.to(x.device(), at::kDouble)).expand({rows});
  const at::Tensor coef = at::stack({at::ones_like(eps), eps, eps.mul(2.0).sqrt()}).contiguous();
  const double unused[3] = {0.0, 0.0, 0.0};
  step_cuda_impl(x, score_c, &coef, unused, so, noise, x_mean, true);
}

void langevin_corrector_cuda(at::Tensor x, const at::Tensor& score, const at::Tensor& alpha, double snr,
                             const at::Tensor& seed, bool per_sample, const c10::optional<at::Tensor>& noise,
                             const c10::optional<at::Tensor>& x_mean) {
  corrector_impl(x, score, alpha, snr, read_seed(seed), per_sample, noise, x_mean);
}

void langevin_corrector_scalar_cuda(at::Tensor x, const at::Tensor& score, double alpha, double snr, int64_t seed,
                                    int64_t offset, bool per_sample, const c10::optional<at::Tensor>& x_mean) {
  const at::Tensor alpha_t = at::full({1}, alpha, x.options().dtype(at::kDouble));
  corrector_impl(x, score, alpha_t, snr, seed_offset(seed, offset), per_sample, c10::nullopt, x_mean);
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fastscore, CUDA, m) {
  m.impl("langevin_corrector_", &cuda::langevin_corrector_cuda);
  m.impl("langevin_corrector_scalar_", &cuda::langevin_corrector_scalar_cuda);
}

}  // namespace fastscore
