// Corrector family, CPU: score_sde's LangevinCorrector step in two passes, noise
// regenerated, never stored.
//   pass 1: per-row sums of squares of score and z in float64 (row_reduce.h: the sum's
//           order, and so its bits, does not depend on the thread count);
//   host:   eps = (snr * |z| / |s|)^2 * 2 * alpha (batch means or per row), exactly the
//           operation order of reference.corrector_step_size;
//   pass 2: the fused update with per-row (1, eps, sqrt(2 eps)) — the step kernel.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "cpu_noise.h"
#include "philox.h"
#include "row_reduce.h"
#include "step_cpu.h"

namespace fastscore {
namespace {

// Per-row sums of squares of the score and of z (the stream, or an explicit noise
// array), staged in the compute type and reduced in float64 (row_reduce.h).
template <typename scalar_t, typename noise_t>
void row_sq_sums(const scalar_t* s, const noise_t* noise, const SeedOffset& so, int64_t rows, int64_t per_row,
                 std::vector<double>& ss, std::vector<double>& zz) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t base = so.offset * per_row;
  const auto sums = row_block_sums<2>(rows, per_row, [&](int64_t c0, int64_t n, double (*lanes)[kLanes]) {
    alignas(64) opmath_t sv[kChunk], zv[kChunk];
    for (int64_t t = 0; t < n; ++t) sv[t] = static_cast<opmath_t>(s[c0 + t]);
    if (noise != nullptr) {
      for (int64_t t = 0; t < n; ++t) zv[t] = static_cast<opmath_t>(noise[c0 + t]);
    } else {
      for_each_noise_tile(so, base, c0, c0 + n, [&](int64_t i, int64_t count, const float* z) {
        for (int64_t t = 0; t < count; ++t) zv[i - c0 + t] = static_cast<opmath_t>(z[t]);
      });
    }
    const int64_t padded = zero_pad(sv, n);
    zero_pad(zv, n);
    accumulate_dot(sv, sv, lanes[0], padded);
    accumulate_dot(zv, zv, lanes[1], padded);
  });
  ss.resize(rows);
  zz.resize(rows);
  for (int64_t r = 0; r < rows; ++r) {
    ss[r] = sums[r][0];
    zz[r] = sums[r][1];
  }
}

// coef [3, rows] = (1, eps, sqrt(2 eps)) per row; alpha has 1 or `rows` entries.
std::vector<double> corrector_coef(const std::vector<double>& ss, const std::vector<double>& zz, double snr,
                                   const double* alpha, int64_t alpha_len, bool per_sample) {
  const int64_t rows = static_cast<int64_t>(ss.size());
  std::vector<double> g(rows), n(rows);
  for (int64_t r = 0; r < rows; ++r) {
    g[r] = std::sqrt(ss[r]);
    n[r] = std::sqrt(zz[r]);
  }
  if (!per_sample) {  // batch means, as score_sde and diffusers
    double gm = 0.0, nm = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      gm += g[r];
      nm += n[r];
    }
    gm /= static_cast<double>(rows);
    nm /= static_cast<double>(rows);
    g.assign(rows, gm);
    n.assign(rows, nm);
  }
  std::vector<double> coef(3 * rows);
  for (int64_t r = 0; r < rows; ++r) {
    const double ratio = g[r] > 0.0 ? snr * n[r] / g[r] : 0.0;
    const double eps = ratio * ratio * 2.0 * alpha[alpha_len == 1 ? 0 : r];
    coef[r] = 1.0;
    coef[rows + r] = eps;
    coef[2 * rows + r] = std::sqrt(eps * 2.0);
  }
  return coef;
}

void corrector_impl(at::Tensor& x, const at::Tensor& score, const double* alpha, int64_t alpha_len, double snr,
                    const SeedOffset& so, bool per_sample, const c10::optional<at::Tensor>& noise,
                    const c10::optional<at::Tensor>& x_mean) {
  if (x.numel() == 0) return;
  check_like(score, x, x.scalar_type(), "score");
  const auto geometry = row_geometry(x);
  const int64_t rows = geometry.first, per_row = geometry.second;
  TORCH_CHECK(alpha_len == 1 || alpha_len == rows, "fastscore: alpha must have 1 or rows entries");
  const at::Tensor score_c = score.contiguous();
  std::vector<double> ss, zz;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "corrector_norms", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    check_like(noise, x, c10::CppTypeToScalarType<opmath_t>::value, "noise");
    if (noise.has_value()) {
      const at::Tensor noise_c = noise->contiguous();
      row_sq_sums(score_c.data_ptr<scalar_t>(), noise_c.data_ptr<opmath_t>(), so, rows, per_row, ss, zz);
    } else {
      row_sq_sums(score_c.data_ptr<scalar_t>(), static_cast<const float*>(nullptr), so, rows, per_row, ss, zz);
    }
  });
  const std::vector<double> coef = corrector_coef(ss, zz, snr, alpha, alpha_len, per_sample);
  step_cpu_impl(x, score_c, coef.data(), rows, so, noise, x_mean, true);
}

void langevin_corrector_cpu(at::Tensor x, const at::Tensor& score, const at::Tensor& alpha, double snr,
                            const at::Tensor& seed, bool per_sample, const c10::optional<at::Tensor>& noise,
                            const c10::optional<at::Tensor>& x_mean) {
  const SeedOffset so = read_seed(seed);
  const at::Tensor alpha_c = alpha.to(at::kCPU, at::kDouble).contiguous();
  corrector_impl(x, score, alpha_c.data_ptr<double>(), alpha_c.numel(), snr, so, per_sample, noise, x_mean);
}

// The eager fast path (scalar alpha, seed and offset as plain arguments).
void langevin_corrector_scalar_cpu(at::Tensor x, const at::Tensor& score, double alpha, double snr, int64_t seed,
                                   int64_t offset, bool per_sample, const c10::optional<at::Tensor>& x_mean) {
  corrector_impl(x, score, &alpha, 1, snr, seed_offset(seed, offset), per_sample, c10::nullopt, x_mean);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastscore, m) {
  m.def("langevin_corrector_(Tensor(a!) x, Tensor score, Tensor alpha, float snr, Tensor seed, bool per_sample, "
        "Tensor? noise, Tensor(b!)? x_mean) -> ()");
  m.def("langevin_corrector_scalar_(Tensor(a!) x, Tensor score, float alpha, float snr, int seed, int offset, "
        "bool per_sample, Tensor(b!)? x_mean) -> ()");
}

TORCH_LIBRARY_IMPL(fastscore, CPU, m) {
  m.impl("langevin_corrector_", &langevin_corrector_cpu);
  m.impl("langevin_corrector_scalar_", &langevin_corrector_scalar_cpu);
}

}  // namespace fastscore
