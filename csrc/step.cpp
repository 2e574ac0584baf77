// Step family, CPU: the fused update out = a*x + b*score + c*z in one pass, the kernel
// behind step_ (in place, optional x_mean), step_scalar_ (its eager fast path),
// update_ (into another tensor), langevin_step_ and perturb.
//
// coef is float64 [3, K] with rows (a, b, c); K = 1 (scalars) or K = rows of x
// (per-sample, broadcast over each row). Math is fp32 (fp64 for fp64 storage), each
// product and sum rounded in the order of affine3, so the bits equal the reference.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_noise.h"
#include "philox.h"
#include "step_cpu.h"

namespace fastscore {
namespace {

template <typename scalar_t>
struct UpdateArgs {
  using opmath_t = at::opmath_type<scalar_t>;
  scalar_t* out;
  const scalar_t* x;
  const scalar_t* score;  // null: no b term
  const opmath_t* noise;  // null: the stream
  scalar_t* mean;         // null: not written
  const double* coef;
  int64_t coef_stride;  // K: 1 or rows
  int64_t per_row;
};

// Calls fn(i, n, row) over [i0, i0 + count) split where the row (and so the
// per-sample coefficient) changes.
template <typename Fn>
inline void for_each_row_segment(int64_t i0, int64_t count, int64_t per_row, bool per_sample, Fn&& fn) {
  if (!per_sample) {
    fn(i0, count, int64_t{0});
    return;
  }
  const int64_t end = i0 + count;
  for (int64_t i = i0; i < end;) {
    const int64_t row = i / per_row;
    const int64_t n = std::min(end, (row + 1) * per_row) - i;
    fn(i, n, row);
    i += n;
  }
}

// The element loop. Compile-time flags keep the branches out of the loop body so
// it vectorises; z is float (the stream) or opmath_t (an explicit noise tensor).
template <bool kScore, bool kMean, bool kNoise, typename scalar_t, typename ZT>
inline void update_run(const UpdateArgs<scalar_t>& u, int64_t i, int64_t n, int64_t row, const ZT* z) {
  using opmath_t = typename UpdateArgs<scalar_t>::opmath_t;
  const int64_t K = u.coef_stride;
  const opmath_t a = static_cast<opmath_t>(u.coef[row]);
  const opmath_t b = static_cast<opmath_t>(u.coef[K + row]);
  const opmath_t c = static_cast<opmath_t>(u.coef[2 * K + row]);
  for (int64_t t = 0; t < n; ++t) {
    opmath_t m = fs_mul(a, static_cast<opmath_t>(u.x[i + t]));
    if constexpr (kScore) m = fs_add(m, fs_mul(b, static_cast<opmath_t>(u.score[i + t])));
    if constexpr (kMean) u.mean[i + t] = static_cast<scalar_t>(m);
    if constexpr (kNoise) m = fs_add(m, fs_mul(c, static_cast<opmath_t>(z[t])));
    u.out[i + t] = static_cast<scalar_t>(m);
  }
}

template <bool kScore, bool kMean, typename scalar_t>
void update_range(const UpdateArgs<scalar_t>& u, const SeedOffset& so, bool with_noise, int64_t begin, int64_t end) {
  const bool per_sample = u.coef_stride > 1;
  if (!with_noise) {
    for_each_row_segment(begin, end - begin, u.per_row, per_sample, [&](int64_t i, int64_t n, int64_t row) {
      update_run<kScore, kMean, false, scalar_t, float>(u, i, n, row, nullptr);
    });
  } else if (u.noise != nullptr) {
    for_each_row_segment(begin, end - begin, u.per_row, per_sample, [&](int64_t i, int64_t n, int64_t row) {
      update_run<kScore, kMean, true>(u, i, n, row, u.noise + i);
    });
  } else {
    for_each_noise_tile(so, so.offset * u.per_row, begin, end, [&](int64_t i0, int64_t count, const float* z) {
      for_each_row_segment(i0, count, u.per_row, per_sample, [&](int64_t i, int64_t n, int64_t row) {
        update_run<kScore, kMean, true>(u, i, n, row, z + (i - i0));
      });
    });
  }
}

// out (contiguous, may be x itself) <- the update of x. All tensors already checked
// by the Python front end; here only what memory safety needs.
void fused_update(at::Tensor& out, const at::Tensor& x, const c10::optional<at::Tensor>& score,
                  const double* coef, int64_t coef_stride, const SeedOffset& so,
                  const c10::optional<at::Tensor>& noise, at::Tensor* mean, bool with_noise) {
  const int64_t per_row = row_geometry(x).second;
  const at::Tensor x_c = x.contiguous();
  at::Tensor score_c, noise_c;
  check_like(score, x, x.scalar_type(), "score");
  if (score.has_value()) score_c = score->contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fused_update", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    check_like(noise, x, c10::CppTypeToScalarType<opmath_t>::value, "noise");
    if (noise.has_value()) noise_c = noise->contiguous();
    UpdateArgs<scalar_t> u{out.data_ptr<scalar_t>(),
                           x_c.data_ptr<scalar_t>(),
                           score_c.defined() ? score_c.data_ptr<scalar_t>() : nullptr,
                           noise_c.defined() ? noise_c.data_ptr<opmath_t>() : nullptr,
                           mean != nullptr ? mean->data_ptr<scalar_t>() : nullptr,
                           coef,
                           coef_stride,
                           per_row};
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      if (u.score && u.mean) update_range<true, true>(u, so, with_noise, begin, end);
      else if (u.score) update_range<true, false>(u, so, with_noise, begin, end);
      else if (u.mean) update_range<false, true>(u, so, with_noise, begin, end);
      else update_range<false, false>(u, so, with_noise, begin, end);
    });
  });
}

void step_cpu(at::Tensor x, const c10::optional<at::Tensor>& score, const at::Tensor& coef, const at::Tensor& seed,
              const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& x_mean, bool with_noise) {
  const SeedOffset so = read_seed(seed);
  if (x.numel() == 0) return;
  const at::Tensor c = checked_coef(coef, x);
  step_cpu_impl(x, score, c.data_ptr<double>(), c.size(1), so, noise, x_mean, with_noise);
}

// The eager fast path: scalar coefficients and seed as plain arguments, so the Python
// side builds no tensors per call (that costs more than the kernel at 2x4096).
void step_scalar_cpu(at::Tensor x, const c10::optional<at::Tensor>& score, double a, double b, double c,
                     int64_t seed, int64_t offset, const c10::optional<at::Tensor>& x_mean, bool with_noise) {
  const SeedOffset so = seed_offset(seed, offset);
  if (x.numel() == 0) return;
  const double coef[3] = {a, b, c};
  step_cpu_impl(x, score, coef, 1, so, c10::nullopt, x_mean, with_noise);
}

at::Tensor perturb_cpu(const at::Tensor& x, const at::Tensor& coef, const at::Tensor& seed,
                       const c10::optional<at::Tensor>& noise) {
  const SeedOffset so = read_seed(seed);
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return out;
  const at::Tensor c = checked_coef(coef, x);
  fused_update(out, x, c10::nullopt, c.data_ptr<double>(), c.size(1), so, noise, nullptr, true);
  return out;
}

// perturb's eager fast path: scalar coefficients and seed as plain arguments.
at::Tensor perturb_scalar_cpu(const at::Tensor& x, double mean_scale, double sigma, int64_t seed, int64_t offset) {
  const SeedOffset so = seed_offset(seed, offset);
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return out;
  const double coef[3] = {mean_scale, 0.0, sigma};
  fused_update(out, x, c10::nullopt, coef, 1, so, c10::nullopt, nullptr, true);
  return out;
}

// out <- a*x + b*score + c*z, x untouched (an ODE stage's drift, a perturbation with score).
void update_cpu(at::Tensor out, const at::Tensor& x, const c10::optional<at::Tensor>& score, const at::Tensor& coef,
                const at::Tensor& seed, const c10::optional<at::Tensor>& noise, bool with_noise) {
  const SeedOffset so = read_seed(seed);
  check_like(out, x, x.scalar_type(), "out");
  if (x.numel() == 0) return;
  const at::Tensor c = checked_coef(coef, x);
  update_cpu_impl(out, x, score, c.data_ptr<double>(), c.size(1), so, noise, with_noise);
}

}  // namespace

void step_cpu_impl(at::Tensor& x, const c10::optional<at::Tensor>& score, const double* coef, int64_t coef_stride,
                   const SeedOffset& so, const c10::optional<at::Tensor>& noise,
                   const c10::optional<at::Tensor>& x_mean, bool with_noise) {
  with_contiguous_outputs(x, x_mean, [&](at::Tensor& out, at::Tensor* mean) {
    fused_update(out, out, score, coef, coef_stride, so, noise, mean, with_noise);
  });
}

void update_cpu_impl(at::Tensor& out, const at::Tensor& x, const c10::optional<at::Tensor>& score, const double* coef,
                     int64_t coef_stride, const SeedOffset& so, const c10::optional<at::Tensor>& noise,
                     bool with_noise) {
  at::Tensor dst = out.is_contiguous() ? out : at::empty_like(out, at::MemoryFormat::Contiguous);
  fused_update(dst, x, score, coef, coef_stride, so, noise, nullptr, with_noise);
  if (!dst.is_same(out)) out.copy_(dst);
}

TORCH_LIBRARY_FRAGMENT(fastscore, m) {
  m.def("step_(Tensor(a!) x, Tensor? score, Tensor coef, Tensor seed, Tensor? noise, Tensor(b!)? x_mean, "
        "bool with_noise) -> ()");
  m.def("step_scalar_(Tensor(a!) x, Tensor? score, float a, float b, float c, int seed, int offset, "
        "Tensor(b!)? x_mean, bool with_noise) -> ()");
  m.def("perturb(Tensor x, Tensor coef, Tensor seed, Tensor? noise) -> Tensor");
  m.def("perturb_scalar(Tensor x, float mean_scale, float sigma, int seed, int offset) -> Tensor");
  m.def("update_(Tensor(a!) out, Tensor x, Tensor? score, Tensor coef, Tensor seed, Tensor? noise, "
        "bool with_noise) -> ()");
}

TORCH_LIBRARY_IMPL(fastscore, CPU, m) {
  m.impl("step_", &step_cpu);
  m.impl("step_scalar_", &step_scalar_cpu);
  m.impl("perturb", &perturb_cpu);
  m.impl("perturb_scalar", &perturb_scalar_cpu);
  m.impl("update_", &update_cpu);
}

}  // namespace fastscore
