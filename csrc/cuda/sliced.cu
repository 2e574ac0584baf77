// Sliced score matching family (Hutchinson trace estimates), CUDA: the per-sample reductions of sliced score matching and their
// fused backward (see csrc/sliced.cpp for the CPU twin, the schemas and the math).
// score s [B, D...]; jv and probes v [B, P, D...]; cd = fp64 for fp64 storage, else fp32.
//   forward: one thread block per ((b, p), chunk of D) reduces float64 partial sums of
//            v.jv and v.s (and s.s for p = 0 with variance reduction), each value
//            converted to cd then widened exactly; ATen finishes the sums on the device
//            (no host sync): terms_b = (sum_p (trace_bp + second_bp)) / P -> cd.
//   backward: one thread per element (b, k) of score, looping over p in order:
//            grad_jv[b,p,k] = per_p_b * v[b,p,k],  grad_s[b,k] = acc (= 0 + c_b0 v_b0k + ...)
//            or scale_b * s[b,k] with variance reduction, all in cd with _rn intrinsics;
//            per_p = (g / P) -> cd, c = (g / P * dots) -> cd, scale = g -> cd are made by
//            ATen in float64 first — the C++ op's operations, so the same bits.
// Divisions by P are by a full tensor, never a scalar: ATen's CUDA division by a CPU
// scalar multiplies by the reciprocal, which can differ from x / double(P) in the last bit.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <tuple>

#include "reduce.cuh"
#include "stream.cuh"

namespace fastscore {
namespace cuda {
namespace {

constexpr int64_t kDotChunk = kThreads * 16;  // elements of a row per thread block in the forward


template <typename scalar_t>
__device__ __forceinline__ double widen(scalar_t x) {
  return static_cast<double>(static_cast<at::opmath_type<scalar_t>>(x));
}

// Block (row, chunk), row = b * P + p: partial[row, chunk] = (v.jv, v.s) over the chunk;
// sq[b, chunk] = s.s when `with_sq` and p == 0.
template <typename scalar_t>
__global__ void sliced_partial_kernel(const scalar_t* score, const scalar_t* jv, const scalar_t* v, int64_t P,
                                      int64_t D, int64_t chunks, bool with_sq, double* partial, double* sq) {
  const int64_t row = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const int64_t b = row / P, p = row - b * P;
  const bool do_sq = with_sq && p == 0;  // uniform over the block
  const int64_t begin = chunk * kDotChunk, end = min(D, begin + kDotChunk);
  const scalar_t* vr = v + row * D;
  const scalar_t* jr = jv + row * D;
  const scalar_t* sr = score + b * D;
  double tt = 0.0, dd = 0.0, ss = 0.0;
  for (int64_t k = begin + threadIdx.x; k < end; k += kThreads) {
    const double x = widen(vr[k]), s = widen(sr[k]);
    tt = __dadd_rn(tt, __dmul_rn(x, widen(jr[k])));
    dd = __dadd_rn(dd, __dmul_rn(x, s));
    if (do_sq) ss = __dadd_rn(ss, __dmul_rn(s, s));
  }
  double sums[3] = {tt, dd, ss};  // ss stays 0 where do_sq is false
  block_sum<3, kThreads>(sums);
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = sums[0];
    partial[2 * blockIdx.x + 1] = sums[1];
    if (do_sq) sq[b * chunks + chunk] = sums[2];
  }
}

// Thread per element i = (b, k) of score: grad_jv[b, :, k] and grad_score[b, k].
// coef: scale [B] with variance reduction, else c [B, P]; per_p [B]; all in cd.
template <typename scalar_t>
__global__ void sliced_backward_kernel(scalar_t* grad_score, scalar_t* grad_jv, const scalar_t* score,
                                       const scalar_t* v, const at::opmath_type<scalar_t>* per_p,
                                       const at::opmath_type<scalar_t>* coef, int64_t P, int64_t D, int64_t n,
                                       bool variance_reduction) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t b = i / D, k = i - b * D;
    const opmath_t pp = per_p[b];
    opmath_t acc = 0;
    for (int64_t p = 0; p < P; ++p) {
      const int64_t j = (b * P + p) * D + k;
      const opmath_t x = static_cast<opmath_t>(v[j]);
      grad_jv[j] = static_cast<scalar_t>(fs_mul(pp, x));
      if (!variance_reduction) acc = fs_add(acc, fs_mul(coef[b * P + p], x));
    }
    if (variance_reduction) acc = fs_mul(coef[b], static_cast<opmath_t>(score[i]));
    grad_score[i] = static_cast<scalar_t>(acc);
  }
}

std::tuple<at::Tensor, at::Tensor> sliced_terms_cuda(const at::Tensor& score, const at::Tensor& jv,
                                                     const at::Tensor& v, bool variance_reduction) {
  const c10::cuda::CUDAGuard guard(score.device());
  const SlicedGeometry g = check_sliced(score, jv, v);
  const at::ScalarType cd = score.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (g.B == 0 || g.P == 0 || g.D == 0) {
    return {at::zeros({g.B}, score.options().dtype(cd)), at::zeros({g.B, g.P}, score.options().dtype(at::kDouble))};
  }
  const int64_t chunks = (g.D + kDotChunk - 1) / kDotChunk;
  const at::TensorOptions f64 = score.options().dtype(at::kDouble);
  at::Tensor partial = at::empty({g.B, g.P, chunks, 2}, f64);
  at::Tensor sq = at::empty({variance_reduction ? g.B : 1, variance_reduction ? chunks : 1}, f64);
  const at::Tensor s_c = score.contiguous(), jv_c = jv.contiguous(), v_c = v.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, score.scalar_type(), "sliced_score_terms_cuda", [&] {
    sliced_partial_kernel<scalar_t><<<static_cast<unsigned>(g.B * g.P * chunks), kThreads, 0, current_stream()>>>(
        s_c.data_ptr<scalar_t>(), jv_c.data_ptr<scalar_t>(), v_c.data_ptr<scalar_t>(), g.P, g.D, chunks,
        variance_reduction, partial.data_ptr<double>(), sq.data_ptr<double>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor sums = partial.sum(2);  // [B, P, 2]
  const at::Tensor trace = sums.select(2, 0);
  at::Tensor dots = sums.select(2, 1).contiguous();
  const at::Tensor second = variance_reduction ? sq.sum(1).mul(0.5).unsqueeze(1) : dots.mul(dots).mul(0.5);
  const at::Tensor acc = trace.add(second).sum(1);
  at::Tensor terms = acc.div(at::full_like(acc, static_cast<double>(g.P))).to(cd);
  return {terms, dots};
}

std::tuple<at::Tensor, at::Tensor> sliced_terms_backward_cuda(const at::Tensor& grad, const at::Tensor& score,
                                                              const at::Tensor& v, const at::Tensor& dots,
                                                              bool variance_reduction) {
  const c10::cuda::CUDAGuard guard(score.device());
  const SlicedGeometry g = check_sliced(score, v, v);
  at::Tensor grad_score = at::empty_like(score, at::MemoryFormat::Contiguous);
  at::Tensor grad_jv = at::empty_like(v, at::MemoryFormat::Contiguous);
  if (g.B == 0 || g.P == 0 || g.D == 0) return {grad_score.zero_(), grad_jv.zero_()};
  TORCH_CHECK(grad.numel() == g.B, "fastscore: grad must have one entry per sample");
  TORCH_CHECK(dots.numel() == g.B * g.P, "fastscore: dots must be [B, P]");
  const at::ScalarType cd = score.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor g64 = grad.to(score.device(), at::kDouble).reshape({g.B}).contiguous();
  const at::Tensor gp = g64.div(at::full_like(g64, static_cast<double>(g.P)));  // IEEE g / P
  const at::Tensor per_p = gp.to(cd).contiguous();
  const at::Tensor coef =
      variance_reduction
          ? g64.to(cd).contiguous()
          : gp.unsqueeze(1).mul(dots.to(score.device(), at::kDouble).reshape({g.B, g.P})).to(cd).contiguous();
  const at::Tensor s_c = score.contiguous(), v_c = v.contiguous();
  const int64_t n = g.B * g.D;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, score.scalar_type(), "sliced_score_terms_backward_cuda",
                                  [&] {
                                    using opmath_t = at::opmath_type<scalar_t>;
                                    sliced_backward_kernel<scalar_t><<<grid_for(n), kThreads, 0, current_stream()>>>(
                                        grad_score.data_ptr<scalar_t>(), grad_jv.data_ptr<scalar_t>(),
                                        s_c.data_ptr<scalar_t>(), v_c.data_ptr<scalar_t>(),
                                        per_p.data_ptr<opmath_t>(), coef.data_ptr<opmath_t>(), g.P, g.D, n,
                                        variance_reduction);
                                  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_score, grad_jv};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fastscore, CUDA, m) {
  m.impl("sliced_score_terms", &cuda::sliced_terms_cuda);
  m.impl("sliced_score_terms_backward", &cuda::sliced_terms_backward_cuda);
}

}  // namespace fastscore
