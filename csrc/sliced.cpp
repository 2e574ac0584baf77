// Sliced score matching family (Hutchinson trace estimates), CPU: the per-sample reductions of sliced score matching in one pass.
// score s [B, D...]; jv and probes v [B, P, D...] (jv = J v or J^T v from a JVP/VJP):
//     dot_bp   = v_bp . s_b                 trace_bp = v_bp . jv_bp
//     term_b   = (1/P) sum_p (trace_bp + 0.5 dot_bp^2)       (+ 0.5 |s_b|^2 instead of the
//                                                            dot term with variance reduction)
// Sums are float64 (row_reduce.h), values staged in the compute type. The backward is
// one elementwise pass: d/d jv = (g/P) v, d/d s = (g/P) sum_p dot_bp v_bp (or g s).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

#include "cpu_noise.h"
#include "plain.h"
#include "row_reduce.h"

namespace fastscore {
namespace {

std::tuple<at::Tensor, at::Tensor> sliced_terms_cpu(const at::Tensor& score, const at::Tensor& jv,
                                                    const at::Tensor& v, bool variance_reduction) {
  const SlicedGeometry g = check_sliced(score, jv, v);
  const at::ScalarType cd = score.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor terms = at::zeros({g.B}, score.options().dtype(cd));
  at::Tensor dots = at::zeros({g.B, g.P}, score.options().dtype(at::kDouble));
  if (g.B == 0 || g.P == 0 || g.D == 0) return {terms, dots};
  const at::Tensor s_c = score.contiguous(), jv_c = jv.contiguous(), v_c = v.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, score.scalar_type(), "sliced_score_terms", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t *sp = s_c.data_ptr<scalar_t>(), *jp = jv_c.data_ptr<scalar_t>(), *vp = v_c.data_ptr<scalar_t>();
    // Rows of the reduction are (b, p) pairs: [v.jv, v.s].
    const FactorPairs<2> pairs = {{{0, 1}, {0, 2}}};  // factors v, jv, s: v.jv and v.s
    const auto pair_sums = row_sums<2, 3, opmath_t>(g.B * g.P, g.D, pairs, [&](int64_t c0, int64_t n,
                                                                               opmath_t (*buf)[kChunk],
                                                                               const opmath_t** f) {
      f[0] = in_compute_type(vp + c0, n, buf[0]);
      f[1] = in_compute_type(jp + c0, n, buf[1]);
      f[2] = buf[2];
      for_each_row_piece(c0, n, g.D, [&](int64_t row, int64_t i, int64_t m) {
        const scalar_t* sr = sp + (row / g.P) * g.D + (i - row * g.D);  // s of sample b = row / P
        for (int64_t t = 0; t < m; ++t) buf[2][i - c0 + t] = static_cast<opmath_t>(sr[t]);
      });
    });
    RowSums<1> sq;
    if (variance_reduction) {
      const FactorPairs<1> square = {{{0, 0}}};
      sq = row_sums<1, 1, opmath_t>(g.B, g.D, square, [&](int64_t c0, int64_t n, opmath_t (*buf)[kChunk],
                                                           const opmath_t** f) {
        f[0] = in_compute_type(sp + c0, n, buf[0]);
      });
    }
    opmath_t* tp = terms.data_ptr<opmath_t>();
    double* dp = dots.data_ptr<double>();
    for (int64_t b = 0; b < g.B; ++b) {
      double acc = 0.0;
      for (int64_t p = 0; p < g.P; ++p) {
        const auto& ps = pair_sums[b * g.P + p];
        dp[b * g.P + p] = ps[1];
        acc += ps[0] + (variance_reduction ? 0.5 * sq[b][0] : 0.5 * (ps[1] * ps[1]));
      }
      tp[b] = static_cast<opmath_t>(acc / static_cast<double>(g.P));
    }
  });
  return {terms, dots};
}

std::tuple<at::Tensor, at::Tensor> sliced_terms_backward_cpu(const at::Tensor& grad, const at::Tensor& score,
                                                             const at::Tensor& v, const at::Tensor& dots,
                                                             bool variance_reduction) {
  const SlicedGeometry g = check_sliced(score, v, v);
  at::Tensor grad_score = at::empty_like(score, at::MemoryFormat::Contiguous);
  at::Tensor grad_jv = at::empty_like(v, at::MemoryFormat::Contiguous);
  if (g.B == 0 || g.P == 0 || g.D == 0) return {grad_score.zero_(), grad_jv.zero_()};
  const at::Tensor g64 = grad.to(at::kCPU, at::kDouble).contiguous();
  const at::Tensor d64 = dots.to(at::kCPU, at::kDouble).contiguous();
  const at::Tensor s_c = score.contiguous(), v_c = v.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, score.scalar_type(), "sliced_score_terms_backward", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const double *gp = g64.data_ptr<double>(), *dp = d64.data_ptr<double>();
    const scalar_t *sp = s_c.data_ptr<scalar_t>(), *vp = v_c.data_ptr<scalar_t>();
    scalar_t *gs = grad_score.data_ptr<scalar_t>(), *gj = grad_jv.data_ptr<scalar_t>();
    at::parallel_for(0, g.B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const opmath_t per_p = static_cast<opmath_t>(gp[b] / static_cast<double>(g.P));
        for (int64_t p = 0; p < g.P; ++p) {
          const scalar_t* vr = vp + (b * g.P + p) * g.D;
          scalar_t* jr = gj + (b * g.P + p) * g.D;
          for (int64_t k = 0; k < g.D; ++k) jr[k] = static_cast<scalar_t>(per_p * static_cast<opmath_t>(vr[k]));
        }
        const scalar_t* sr = sp + b * g.D;
        scalar_t* out = gs + b * g.D;
        if (variance_reduction) {
          const opmath_t scale = static_cast<opmath_t>(gp[b]);
          for (int64_t k = 0; k < g.D; ++k) out[k] = static_cast<scalar_t>(scale * static_cast<opmath_t>(sr[k]));
          continue;
        }
        std::vector<opmath_t> c(g.P);  // (g / P) dot_bp, rounded once to the compute type
        for (int64_t p = 0; p < g.P; ++p) c[p] = static_cast<opmath_t>(gp[b] / static_cast<double>(g.P) * dp[b * g.P + p]);
        for (int64_t k = 0; k < g.D; ++k) {
          opmath_t acc = 0;
          for (int64_t p = 0; p < g.P; ++p) acc += c[p] * static_cast<opmath_t>(vp[(b * g.P + p) * g.D + k]);
          out[k] = static_cast<scalar_t>(acc);
        }
      }
    });
  });
  return {grad_score, grad_jv};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastscore, CPU, m) {
  m.impl("sliced_score_terms", &sliced_terms_cpu);
  m.impl("sliced_score_terms_backward", &sliced_terms_backward_cpu);
}

FASTSCORE_PLAIN(sliced_score_terms, sliced_terms_cpu);
FASTSCORE_PLAIN(sliced_score_terms_backward, sliced_terms_backward_cpu);

}  // namespace fastscore
