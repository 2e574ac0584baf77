// Corrector family, CPU: score_sde's LangevinCorrector step in two passes, noise
// regenerated, never stored.
//   pass 1: per-row sums of squares of score and z (float64), over fixed blocks of the
//           row with 16 fixed lanes each, so the sum's order (and its bits) does not
//           depend on the thread count;
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
#include "step_cpu.h"

namespace fastscore {
namespace {

constexpr int64_t kNormBlock = 16384;  // elements per partial sum; fixed, not per thread
constexpr int64_t kChunk = 256;        // elements staged per lane pass
constexpr int kLanes = 16;

// lanes[l] += v[g + l]^2 over one staged chunk, in float64. Multiversioned like the
// noise generator: the 16 lanes become two AVX-512 (or four AVX2) double vectors.
__attribute__((target_clones("avx512f", "avx2", "default")))
void accumulate_sq_f32(const float* v, double* lanes) {
  for (int64_t g = 0; g < kChunk; g += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += static_cast<double>(v[g + l]) * static_cast<double>(v[g + l]);
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void accumulate_sq_f64(const double* v, double* lanes) {
  for (int64_t g = 0; g < kChunk; g += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += v[g + l] * v[g + l];
  }
}

inline void accumulate_sq(const float* v, double* lanes) { accumulate_sq_f32(v, lanes); }
inline void accumulate_sq(const double* v, double* lanes) { accumulate_sq_f64(v, lanes); }

// Sums of squares of s[begin, end) and of the noise over the same elements (the stream
// from global index base + i, or an explicit noise array), in 16 lanes. Values are
// staged per chunk in their compute type (fp32, or fp64 for fp64 storage).
template <typename scalar_t, typename noise_t>
void block_sq_sums(const scalar_t* s, const noise_t* noise, const SeedOffset& so, int64_t base, int64_t begin,
                   int64_t end, double* ss_out, double* zz_out) {
  using opmath_t = at::opmath_type<scalar_t>;
  alignas(64) double ss[kLanes] = {0}, zz[kLanes] = {0};
  alignas(64) opmath_t sv[kChunk], zv[kChunk];
  for (int64_t c0 = begin; c0 < end; c0 += kChunk) {
    const int64_t n = std::min(kChunk, end - c0);
    for (int64_t t = 0; t < n; ++t) sv[t] = static_cast<opmath_t>(s[c0 + t]);
    if (noise != nullptr) {
      for (int64_t t = 0; t < n; ++t) zv[t] = static_cast<opmath_t>(noise[c0 + t]);
    } else {
      for_each_noise_tile(so, base, c0, c0 + n, [&](int64_t i, int64_t count, const float* z) {
        for (int64_t t = 0; t < count; ++t) zv[i - c0 + t] = static_cast<opmath_t>(z[t]);
      });
    }
    for (int64_t t = n; t < kChunk; ++t) sv[t] = zv[t] = opmath_t(0);
    accumulate_sq(sv, ss);
    accumulate_sq(zv, zz);
  }
  double s_total = 0.0, z_total = 0.0;
  for (int l = 0; l < kLanes; ++l) {
    s_total += ss[l];
    z_total += zz[l];
  }
  *ss_out = s_total;
  *zz_out = z_total;
}

// Per-row sums of squares: ss[r], zz[r] for r in [0, rows).
template <typename scalar_t, typename noise_t>
void row_sq_sums(const scalar_t* s, const noise_t* noise, const SeedOffset& so, int64_t rows, int64_t per_row,
                 std::vector<double>& ss, std::vector<double>& zz) {
  const int64_t blocks_per_row = std::max<int64_t>(1, (per_row + kNormBlock - 1) / kNormBlock);
  std::vector<double> part_s(rows * blocks_per_row), part_z(rows * blocks_per_row);
  const int64_t base = so.offset * per_row;
  at::parallel_for(0, rows * blocks_per_row, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t row = b / blocks_per_row, k = b % blocks_per_row;
      const int64_t begin = row * per_row + k * kNormBlock;
      const int64_t end = std::min(row * per_row + per_row, begin + kNormBlock);
      block_sq_sums(s, noise, so, base, begin, end, &part_s[b], &part_z[b]);
    }
  });
  ss.assign(rows, 0.0);
  zz.assign(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = 0; k < blocks_per_row; ++k) {
      ss[r] += part_s[r * blocks_per_row + k];
      zz[r] += part_z[r * blocks_per_row + k];
    }
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
