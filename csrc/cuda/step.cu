// Update family, CUDA: the fused linear combination
//     out_o = ((a x + b_1 y_1) + ... + b_K y_K) + c z          (K <= 4 tensors y, 1 or 2 outputs)
// behind step_ (in place), update_ (into another tensor) and lincomb (a new tensor). Same
// arithmetic order as the CPU kernel (csrc/step.cpp) with _rn intrinsics, so the bits
// match it and the reference. Coefficient slots (UpdateCoefs) travel by value; a slot
// that is a device tensor is read by the kernel, as are the seed and offset.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "step_cuda.h"
#include "stream.cuh"

namespace fastscore {
namespace cuda {
namespace {

template <typename scalar_t>
struct UpdateArgs {
  using opmath_t = at::opmath_type<scalar_t>;
  scalar_t* out;
  scalar_t* out2;  // null: one output
  const scalar_t* x;
  const scalar_t* y[kMaxTerms];
  const opmath_t* noise;  // null: the stream (or no noise term)
  UpdateCoefs coefs;
  int64_t per_row, n;
};

template <int K, typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> combination(const UpdateArgs<scalar_t>& u, int o, int64_t i,
                                                                 int64_t row, at::opmath_type<scalar_t> x,
                                                                 at::opmath_type<scalar_t> z) {
  using opmath_t = at::opmath_type<scalar_t>;
  const Coef* c = u.coefs.slot[o];
  opmath_t m = fs_mul(static_cast<opmath_t>(c[0].at_row(row)), x);
#pragma unroll
  for (int k = 0; k < K; ++k) {
    m = fs_add(m, fs_mul(static_cast<opmath_t>(c[1 + k].at_row(row)), static_cast<opmath_t>(u.y[k][i])));
  }
  if (u.coefs.noise_term[o]) m = fs_add(m, fs_mul(static_cast<opmath_t>(c[K + 1].at_row(row)), z));
  return m;
}

template <int K, bool kOut2, typename scalar_t>
__device__ __forceinline__ void update_element(const UpdateArgs<scalar_t>& u, int64_t i,
                                               at::opmath_type<scalar_t> z) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t row = u.coefs.per_row ? i / u.per_row : 0;
  const opmath_t x = static_cast<opmath_t>(u.x[i]);
  const opmath_t m = combination<K>(u, 0, i, row, x, z);
  if constexpr (kOut2) u.out2[i] = static_cast<scalar_t>(combination<K>(u, 1, i, row, x, z));
  u.out[i] = static_cast<scalar_t>(m);
}

template <int K, bool kOut2, typename scalar_t>
__global__ void update_stream_kernel(UpdateArgs<scalar_t> u, Stream s) {
  using opmath_t = at::opmath_type<scalar_t>;
  for_each_owned_element(stream_pos(s, u.per_row), u.n,
                         [&](int64_t i, float z) { update_element<K, kOut2>(u, i, static_cast<opmath_t>(z)); });
}

// An explicit noise tensor, or no noise term at all (c = 0: an ODE step, no RNG).
template <int K, bool kOut2, typename scalar_t>
__global__ void update_plain_kernel(UpdateArgs<scalar_t> u) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < u.n; i += stride) {
    update_element<K, kOut2>(u, i, u.noise != nullptr ? u.noise[i] : opmath_t(0));
  }
}

}  // namespace

void update_cuda_run(UpdateTensors& t, const UpdateCoefs& coefs, const Stream& s) {
  const c10::cuda::CUDAGuard guard(t.x.device());
  const int64_t n = t.x.numel();
  if (n != 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.x.scalar_type(), "fastscore_update_cuda", [&] {
      using opmath_t = at::opmath_type<scalar_t>;
      UpdateArgs<scalar_t> u{t.out.data_ptr<scalar_t>(),
                             t.out2.defined() ? t.out2.data_ptr<scalar_t>() : nullptr,
                             t.x.data_ptr<scalar_t>(),
                             {},
                             t.noise.defined() ? t.noise.data_ptr<opmath_t>() : nullptr,
                             coefs,
                             row_geometry(t.x).second,
                             n};
      for (size_t k = 0; k < t.ys.size(); ++k) u.y[k] = t.ys[k].data_ptr<scalar_t>();
      with_terms(coefs.n_terms, [&](auto K) {
        with_bool(coefs.n_out == 2, [&](auto out2) {
          constexpr int kK = decltype(K)::value;
          constexpr bool kOut2 = decltype(out2)::value;
          if (coefs.draws() && u.noise == nullptr) {
            update_stream_kernel<kK, kOut2, scalar_t><<<grid_for(counter_span(n)), kThreads, 0, current_stream()>>>(u, s);
          } else {
            update_plain_kernel<kK, kOut2, scalar_t><<<grid_for(n), kThreads, 0, current_stream()>>>(u);
          }
        });
      });
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  t.finish();
}

using Ops = UpdateOps<update_cuda_run>;

}  // namespace cuda

TORCH_LIBRARY_IMPL(fastscore, CUDA, m) {
  m.impl("step_", &cuda::Ops::step_);
  m.impl("update_", &cuda::Ops::update_);
  m.impl("lincomb", &cuda::Ops::lincomb);
}

}  // namespace fastscore
