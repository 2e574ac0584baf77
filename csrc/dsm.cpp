// DSM family, CPU: the per-sample denoising score matching loss
//     loss_b = 0.5 * w_b * sum_k (s_bk + z_bk / sigma_b)^2
// with z regenerated from (seed, offset) — the z that perturb drew for x + sigma z — in
// the forward and again in the fused backward, grad s_bk = (g_b w_b) (s_bk + z_bk / sigma_b),
// so no noise tensor is ever stored. coef: float64 [2, K] = rows (1/sigma, w), K = 1 or B.
// d = s + z * (1/sigma) is rounded in the compute type (fp32, fp64 for fp64) as in the
// reference; the row sums are float64 (row_reduce.h).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_noise.h"
#include "philox.h"
#include "row_reduce.h"

namespace fastscore {
namespace {

// Stages d = s + z * inv_sigma for flat elements [c0, c0 + n) of one row.
template <typename scalar_t, typename opmath_t>
inline void stage_residual(const scalar_t* s, const opmath_t* noise, const SeedOffset& so, int64_t base, int64_t c0,
                           int64_t n, opmath_t inv_sigma, opmath_t* d) {
  if (noise != nullptr) {
    for (int64_t t = 0; t < n; ++t) d[t] = fs_add(static_cast<opmath_t>(s[c0 + t]), fs_mul(noise[c0 + t], inv_sigma));
    return;
  }
  for_each_noise_tile(so, base, c0, c0 + n, [&](int64_t i, int64_t count, const float* z) {
    for (int64_t t = 0; t < count; ++t) {
      d[i - c0 + t] = fs_add(static_cast<opmath_t>(s[i + t]), fs_mul(static_cast<opmath_t>(z[t]), inv_sigma));
    }
  });
}

at::Tensor dsm_loss_cpu(const at::Tensor& score, const at::Tensor& coef, const at::Tensor& seed,
                        const c10::optional<at::Tensor>& noise) {
  const SeedOffset so = read_seed(seed);
  const auto geometry = row_geometry(score);
  const int64_t rows = geometry.first, per_row = geometry.second;
  const at::ScalarType cd = score.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor loss = at::zeros({rows}, score.options().dtype(cd));
  if (score.numel() == 0) return loss;
  const at::Tensor c = checked_dsm_coef(coef, score);
  const double* cf = c.data_ptr<double>();
  const int64_t K = c.size(1);
  const at::Tensor s_c = score.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, score.scalar_type(), "dsm_loss", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    check_like(noise, score, c10::CppTypeToScalarType<opmath_t>::value, "noise");
    const at::Tensor n_c = noise.has_value() ? noise->contiguous() : at::Tensor();
    const opmath_t* np = n_c.defined() ? n_c.data_ptr<opmath_t>() : nullptr;
    const scalar_t* sp = s_c.data_ptr<scalar_t>();
    const auto sums = row_block_sums<1>(rows, per_row, [&](int64_t c0, int64_t n, double (*lanes)[kLanes]) {
      const int64_t row = c0 / per_row;
      alignas(64) opmath_t d[kChunk];
      stage_residual(sp, np, so, so.offset * per_row, c0, n, static_cast<opmath_t>(cf[K == 1 ? 0 : row]), d);
      accumulate_dot(d, d, lanes[0], zero_pad(d, n));
    });
    opmath_t* out = loss.data_ptr<opmath_t>();
    for (int64_t r = 0; r < rows; ++r) out[r] = static_cast<opmath_t>(0.5 * cf[K + (K == 1 ? 0 : r)] * sums[r][0]);
  });
  return loss;
}

at::Tensor dsm_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& score, const at::Tensor& coef,
                                 const at::Tensor& seed, const c10::optional<at::Tensor>& noise) {
  const SeedOffset so = read_seed(seed);
  const auto geometry = row_geometry(score);
  const int64_t rows = geometry.first, per_row = geometry.second;
  at::Tensor grad_score = at::empty_like(score, at::MemoryFormat::Contiguous);
  if (score.numel() == 0) return grad_score;
  TORCH_CHECK(grad.numel() == rows, "fastscore: dsm grad must have one entry per row");
  const at::Tensor c = checked_dsm_coef(coef, score);
  const double* cf = c.data_ptr<double>();
  const int64_t K = c.size(1);
  const at::Tensor g64 = grad.to(at::kCPU, at::kDouble).contiguous();
  const double* gp = g64.data_ptr<double>();
  const at::Tensor s_c = score.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, score.scalar_type(), "dsm_loss_backward", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    check_like(noise, score, c10::CppTypeToScalarType<opmath_t>::value, "noise");
    const at::Tensor n_c = noise.has_value() ? noise->contiguous() : at::Tensor();
    const opmath_t* np = n_c.defined() ? n_c.data_ptr<opmath_t>() : nullptr;
    const scalar_t* sp = s_c.data_ptr<scalar_t>();
    scalar_t* out = grad_score.data_ptr<scalar_t>();
    // One row segment at a time, staged in chunks: the same residual as the forward.
    at::parallel_for(0, score.numel(), kGrain, [&](int64_t begin, int64_t end) {
      alignas(64) opmath_t d[kChunk];
      for (int64_t c0 = begin; c0 < end;) {
        const int64_t row = c0 / per_row;
        const int64_t n = std::min({kChunk, end - c0, (row + 1) * per_row - c0});
        const int64_t k = K == 1 ? 0 : row;
        stage_residual(sp, np, so, so.offset * per_row, c0, n, static_cast<opmath_t>(cf[k]), d);
        const opmath_t scale = static_cast<opmath_t>(gp[row] * cf[K + k]);
        for (int64_t t = 0; t < n; ++t) out[c0 + t] = static_cast<scalar_t>(fs_mul(scale, d[t]));
        c0 += n;
      }
    });
  });
  return grad_score;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastscore, m) {
  m.def("dsm_loss(Tensor score, Tensor coef, Tensor seed, Tensor? noise) -> Tensor");
  m.def("dsm_loss_backward(Tensor grad, Tensor score, Tensor coef, Tensor seed, Tensor? noise) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastscore, CPU, m) {
  m.impl("dsm_loss", &dsm_loss_cpu);
  m.impl("dsm_loss_backward", &dsm_loss_backward_cpu);
}

}  // namespace fastscore
