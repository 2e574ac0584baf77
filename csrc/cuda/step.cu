// Step family, CUDA: the fused update out = a*x + b*score + c*z behind step_,
// step_scalar_ (eager fast path), update_ (into another tensor) and perturb. Same arithmetic order as the CPU kernel
// (affine3 in csrc/philox.h), so the bits match it and the reference.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../op_common.h"
#include "step_cuda.h"
#include "stream.cuh"

namespace fastscore {
namespace cuda {
namespace {

template <typename scalar_t>
struct UpdateArgs {
  using opmath_t = at::opmath_type<scalar_t>;
  scalar_t* out;
  const scalar_t* x;
  const scalar_t* score;  // null: no b term
  const opmath_t* noise;  // null: the stream
  scalar_t* mean;         // null: not written
  const double* coef;     // device [3, K]; null: use scalar_coef
  double scalar_coef[3];
  int64_t coef_stride;
  int64_t per_row;
  int64_t n;
};

template <typename scalar_t>
__device__ __forceinline__ void update_element(const UpdateArgs<scalar_t>& u, int64_t i, bool with_noise,
                                               at::opmath_type<scalar_t> z) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t k = u.coef_stride == 1 ? 0 : i / u.per_row;
  const double* cf = u.coef;
  const opmath_t a = static_cast<opmath_t>(cf ? cf[k] : u.scalar_coef[0]);
  const opmath_t b = static_cast<opmath_t>(cf ? cf[u.coef_stride + k] : u.scalar_coef[1]);
  const opmath_t c = static_cast<opmath_t>(cf ? cf[2 * u.coef_stride + k] : u.scalar_coef[2]);
  opmath_t m = fs_mul(a, static_cast<opmath_t>(u.x[i]));
  if (u.score) m = fs_add(m, fs_mul(b, static_cast<opmath_t>(u.score[i])));
  if (u.mean) u.mean[i] = static_cast<scalar_t>(m);
  if (with_noise) m = fs_add(m, fs_mul(c, z));
  u.out[i] = static_cast<scalar_t>(m);
}

template <typename scalar_t>
__global__ void update_stream_kernel(UpdateArgs<scalar_t> u, int64_t base, CounterRange range, uint32_t k0,
                                     uint32_t k1) {
  using opmath_t = at::opmath_type<scalar_t>;
  for_each_owned_element(k0, k1, base, u.n, range,
                         [&](int64_t i, float z) { update_element(u, i, true, static_cast<opmath_t>(z)); });
}

// Explicit noise tensor, or no noise term at all (c = 0: an ODE step, no RNG).
template <typename scalar_t>
__global__ void update_plain_kernel(UpdateArgs<scalar_t> u, bool with_noise) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < u.n; i += stride) {
    update_element(u, i, with_noise, u.noise ? u.noise[i] : at::opmath_type<scalar_t>(0));
  }
}

void fused_update(at::Tensor& out, const at::Tensor& x, const c10::optional<at::Tensor>& score,
                  const at::Tensor* coef, const double scalar_coef[3], const SeedOffset& so,
                  const c10::optional<at::Tensor>& noise, at::Tensor* mean, bool with_noise) {
  check_like(score, x, x.scalar_type(), "score");
  const at::Tensor x_c = x.contiguous();
  const at::Tensor score_c = score.has_value() ? score->contiguous() : at::Tensor();
  const int64_t n = x.numel();
  const int64_t per_row = row_geometry(x).second;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fused_update_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    check_like(noise, x, c10::CppTypeToScalarType<opmath_t>::value, "noise");
    const at::Tensor noise_c = noise.has_value() ? noise->contiguous() : at::Tensor();
    UpdateArgs<scalar_t> u{out.data_ptr<scalar_t>(),
                           x_c.data_ptr<scalar_t>(),
                           score_c.defined() ? score_c.data_ptr<scalar_t>() : nullptr,
                           noise_c.defined() ? noise_c.data_ptr<opmath_t>() : nullptr,
                           mean ? mean->data_ptr<scalar_t>() : nullptr,
                           coef ? coef->data_ptr<double>() : nullptr,
                           {scalar_coef[0], scalar_coef[1], scalar_coef[2]},
                           coef ? coef->size(1) : 1,
                           per_row,
                           n};
    if (with_noise && !noise_c.defined()) {
      const int64_t base = so.offset * per_row;
      const CounterRange range = counters_for(base, n);
      update_stream_kernel<scalar_t><<<grid_for(range.count), kThreads, 0, current_stream()>>>(u, base, range,
                                                                                               so.k0, so.k1);
    } else {
      update_plain_kernel<scalar_t><<<grid_for(n), kThreads, 0, current_stream()>>>(u, with_noise);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

const double kNoScalars[3] = {0.0, 0.0, 0.0};

void step_cuda(at::Tensor x, const c10::optional<at::Tensor>& score, const at::Tensor& coef, const at::Tensor& seed,
               const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& x_mean, bool with_noise) {
  const SeedOffset so = read_seed(seed);
  if (x.numel() == 0) return;
  const at::Tensor c = checked_coef(coef, x);
  step_cuda_impl(x, score, &c, kNoScalars, so, noise, x_mean, with_noise);
}

void step_scalar_cuda(at::Tensor x, const c10::optional<at::Tensor>& score, double a, double b, double c,
                      int64_t seed, int64_t offset, const c10::optional<at::Tensor>& x_mean, bool with_noise) {
  const SeedOffset so = seed_offset(seed, offset);
  if (x.numel() == 0) return;
  const double coef[3] = {a, b, c};
  step_cuda_impl(x, score, nullptr, coef, so, c10::nullopt, x_mean, with_noise);
}

at::Tensor perturb_cuda(const at::Tensor& x, const at::Tensor& coef, const at::Tensor& seed,
                        const c10::optional<at::Tensor>& noise) {
  const SeedOffset so = read_seed(seed);
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return out;
  const at::Tensor c = checked_coef(coef, x);
  fused_update(out, x, c10::nullopt, &c, kNoScalars, so, noise, nullptr, true);
  return out;
}

at::Tensor perturb_scalar_cuda(const at::Tensor& x, double mean_scale, double sigma, int64_t seed, int64_t offset) {
  const SeedOffset so = seed_offset(seed, offset);
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return out;
  const double coef[3] = {mean_scale, 0.0, sigma};
  fused_update(out, x, c10::nullopt, nullptr, coef, so, c10::nullopt, nullptr, true);
  return out;
}

void update_cuda(at::Tensor out, const at::Tensor& x, const c10::optional<at::Tensor>& score, const at::Tensor& coef,
                 const at::Tensor& seed, const c10::optional<at::Tensor>& noise, bool with_noise) {
  const SeedOffset so = read_seed(seed);
  check_like(out, x, x.scalar_type(), "out");
  if (x.numel() == 0) return;
  const at::Tensor c = checked_coef(coef, x);
  at::Tensor dst = out.is_contiguous() ? out : at::empty_like(out, at::MemoryFormat::Contiguous);
  fused_update(dst, x, score, &c, kNoScalars, so, noise, nullptr, with_noise);
  if (!dst.is_same(out)) out.copy_(dst);
}

}  // namespace

void step_cuda_impl(at::Tensor& x, const c10::optional<at::Tensor>& score, const at::Tensor* coef,
                    const double scalar_coef[3], const SeedOffset& so, const c10::optional<at::Tensor>& noise,
                    const c10::optional<at::Tensor>& x_mean, bool with_noise) {
  with_contiguous_outputs(x, x_mean, [&](at::Tensor& out, at::Tensor* mean) {
    fused_update(out, out, score, coef, scalar_coef, so, noise, mean, with_noise);
  });
}

}  // namespace cuda

TORCH_LIBRARY_IMPL(fastscore, CUDA, m) {
  m.impl("step_", &cuda::step_cuda);
  m.impl("step_scalar_", &cuda::step_scalar_cuda);
  m.impl("perturb", &cuda::perturb_cuda);
  m.impl("perturb_scalar", &cuda::perturb_scalar_cuda);
  m.impl("update_", &cuda::update_cuda);
}

}  // namespace fastscore
