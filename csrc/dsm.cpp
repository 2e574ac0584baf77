// DSM family, CPU: the per-sample denoising score matching loss
//     loss_b = 0.5 * w_b * sum_k (s_bk + z_bk / sigma_b)^2
// with z regenerated from (seed, offset) — the z that perturb drew for x + sigma z — in
// the forward and again in the fused backward, grad s_bk = (g_b w_b) (s_bk + z_bk / sigma_b),
// so no noise tensor is ever stored. sigma and w: floats or per-sample tensors (Coef);
// 1/sigma is taken in float64 and rounded once to the compute type, and
// d = s + z * (1/sigma) is rounded in the compute type (fp32, fp64 for fp64) as in the
// reference; the row sums are float64 (row_reduce.h).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <type_traits>

#include "cpu_features.h"
#include "cpu_noise.h"
#include "plain.h"
#include "row_reduce.h"

namespace fastscore {
namespace {

// 1/sigma of a row, in float64 (the reference's 1.0 / sigma), rounded by the caller.
inline double inverse_sigma(const Coef& sigma, int64_t row) { return 1.0 / sigma.at_row(row); }

// d[t] = s[t] + d[t] * inv for t < n: the residual, rounded as the reference's s + z / sigma
// with 1/sigma rounded to the compute type first. Run through with_simd_for.
template <typename scalar_t, typename opmath_t>
FS_SIMD_INLINE void add_scaled_noise(const scalar_t* s, opmath_t inv, int64_t n, opmath_t* d) {
  for (int64_t t = 0; t < n; ++t) d[t] = fs_add(static_cast<opmath_t>(s[t]), fs_mul(d[t], inv));
}

// Stages d = s + z * (1/sigma_row) for flat elements [c0, c0 + n) (n <= kNoiseChunk; one
// row or many short rows): the stream (or the explicit noise) for the whole range at once.
template <typename scalar_t, typename opmath_t>
inline void stage_residuals(const scalar_t* s, const opmath_t* noise, const HostStream& so, int64_t per_row,
                            const Coef& sigma, int64_t c0, int64_t n, opmath_t* d) {
  const int64_t base = so.offset * per_row;
  if constexpr (std::is_same_v<scalar_t, float>) {
    // One sigma over the range (long rows are staged a piece of one row at a time): the
    // generator makes d = s + (1/sigma) z itself (stream_update, a = 1) instead of a
    // second pass over the chunk - the same products and sums, in the same order.
    const int64_t row = c0 / per_row;
    if (noise == nullptr && (!sigma.per_row() || (c0 + n - 1) / per_row == row) && unit_product_exact()) {
      const float inv = static_cast<float>(inverse_sigma(sigma, row));
      stream_update(so.k0, so.k1, static_cast<uint64_t>(base + c0), n, {d, s + c0, nullptr, 1.0f, 0.0f, inv});
      return;
    }
  }
  if (noise != nullptr) {
    for (int64_t t = 0; t < n; ++t) d[t] = noise[c0 + t];
  } else if constexpr (std::is_same_v<opmath_t, float>) {  // z straight into d
    stream_normals(so.k0, so.k1, static_cast<uint64_t>(base + c0), n, d);
  } else {
    for_each_noise_chunk(so, base, c0, c0 + n, [&](int64_t i, int64_t count, const float* z) {
      for (int64_t t = 0; t < count; ++t) d[i - c0 + t] = static_cast<opmath_t>(z[t]);
    });
  }
  if (!sigma.per_row()) {  // one 1/sigma: one loop over the range
    const opmath_t inv = static_cast<opmath_t>(inverse_sigma(sigma, 0));
    with_simd_for<scalar_t>([&]() FS_SIMD_BODY { add_scaled_noise(s + c0, inv, n, d); });
    return;
  }
  if (per_row <= kShortRow && c0 % per_row == 0 && n % per_row == 0) {  // whole short rows: no call per row
    const int64_t r0 = c0 / per_row, nr = n / per_row;
    alignas(64) double inv[kChunk];
    alignas(64) opmath_t e[kChunk];  // 1/sigma of each element's row
    sigma.rows_to(r0, nr, inv);
    with_simd_for<scalar_t>([&]() FS_SIMD_BODY {
      for (int64_t q = 0; q < nr; ++q) inv[q] = 1.0 / inv[q];
      spread_rows(inv, per_row, 0, n, e);
      for (int64_t t = 0; t < n; ++t) d[t] = fs_add(static_cast<opmath_t>(s[c0 + t]), fs_mul(d[t], e[t]));
    });
    return;
  }
  for_each_row_piece(c0, n, per_row, [&](int64_t row, int64_t i, int64_t m) {
    const opmath_t inv = static_cast<opmath_t>(inverse_sigma(sigma, row));
    with_simd_for<scalar_t>([&]() FS_SIMD_BODY { add_scaled_noise(s + i, inv, m, d + (i - c0)); });
  });
}

// out[t] = scale * d[t] for t < n, stored in the storage type. Run through with_simd_for.
template <typename scalar_t, typename opmath_t>
FS_SIMD_INLINE void scale_into(opmath_t scale, const opmath_t* d, int64_t n, scalar_t* out) {
  for (int64_t t = 0; t < n; ++t) out[t] = static_cast<scalar_t>(fs_mul(scale, d[t]));
}

// The explicit noise tensor, checked and contiguous (undefined: the stream).
template <typename opmath_t>
at::Tensor explicit_noise(const c10::optional<at::Tensor>& noise, const at::Tensor& score) {
  if (!noise.has_value()) return at::Tensor();
  TORCH_CHECK(noise->sizes() == score.sizes() && noise->scalar_type() == c10::CppTypeToScalarType<opmath_t>::value,
              "fastscore: noise must match score and have the compute dtype");
  return noise->contiguous();
}

at::Tensor dsm_loss_cpu(const at::Tensor& score, double sigma, const c10::optional<at::Tensor>& sigma_t, double weight,
                        const c10::optional<at::Tensor>& weight_t, const c10::optional<at::Tensor>& noise,
                        const c10::optional<at::Tensor>& seed_t, int64_t seed,
                        const c10::optional<at::Tensor>& offset_t, int64_t offset) {
  const HostStream so = host_stream(make_stream(seed_t, seed, offset_t, offset, score.device()));
  const auto geometry = row_geometry(score);
  const int64_t rows = geometry.first, per_row = geometry.second;
  if (score.numel() == 0) return at::zeros({rows}, score.options().dtype(compute_type(score.scalar_type())));
  at::Tensor loss = at::empty({rows}, score.options().dtype(compute_type(score.scalar_type())));  // all rows written
  const Coef sig = make_coef(sigma, sigma_t, score, "sigma"), w = make_coef(weight, weight_t, score, "weight");
  const at::Tensor s_c = score.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, score.scalar_type(), "dsm_loss", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor n_c = explicit_noise<opmath_t>(noise, score);
    const opmath_t* np = n_c.defined() ? n_c.data_ptr<opmath_t>() : nullptr;
    const scalar_t* sp = s_c.data_ptr<scalar_t>();
    const FactorPairs<1> square = {{{0, 0}}};  // |d|^2
    opmath_t* out = loss.data_ptr<opmath_t>();
    auto stage = [&](int64_t c0, int64_t n, opmath_t (*buf)[kChunk], const opmath_t** f) {
      stage_residuals(sp, np, so, per_row, sig, c0, n, buf[0]);
      f[0] = buf[0];
    };
    auto finish = [&](std::array<double, 1>* sum, int64_t r0, int64_t n) {  // in the tasks, for short rows
      w.for_row_pieces(r0, n, [&](int64_t q0, int64_t m, const double* wr) {
        for (int64_t q = 0; q < m; ++q) out[r0 + q0 + q] = static_cast<opmath_t>(0.5 * wr[q] * sum[q0 + q][0]);
      });
    };
    row_sums<1, 1, opmath_t>(rows, per_row, square, stage, finish, RowTasks{1, false, false});
  });
  return loss;
}

at::Tensor dsm_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& score, double sigma,
                                 const c10::optional<at::Tensor>& sigma_t, double weight,
                                 const c10::optional<at::Tensor>& weight_t, const c10::optional<at::Tensor>& noise,
                                 const c10::optional<at::Tensor>& seed_t, int64_t seed,
                                 const c10::optional<at::Tensor>& offset_t, int64_t offset) {
  const HostStream so = host_stream(make_stream(seed_t, seed, offset_t, offset, score.device()));
  const auto geometry = row_geometry(score);
  const int64_t rows = geometry.first, per_row = geometry.second;
  at::Tensor grad_score = at::empty_like(score, at::MemoryFormat::Contiguous);
  if (score.numel() == 0) return grad_score;
  TORCH_CHECK(grad.numel() == rows, "fastscore: dsm grad must have one entry per row");
  const Coef sig = make_coef(sigma, sigma_t, score, "sigma"), w = make_coef(weight, weight_t, score, "weight");
  const at::Tensor g64 = grad.to(at::kCPU, at::kDouble).contiguous();
  const double* gp = g64.data_ptr<double>();
  const at::Tensor s_c = score.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, score.scalar_type(), "dsm_loss_backward", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor n_c = explicit_noise<opmath_t>(noise, score);
    const opmath_t* np = n_c.defined() ? n_c.data_ptr<opmath_t>() : nullptr;
    const scalar_t* sp = s_c.data_ptr<scalar_t>();
    scalar_t* out = grad_score.data_ptr<scalar_t>();
    if (per_row <= kShortRow) {  // whole short rows per chunk, as the forward stages them
      const int64_t rows_per_chunk = kChunk / per_row;
      at::parallel_for(0, rows, std::max<int64_t>(1, kShortRowGrain / per_row), [&](int64_t r0, int64_t r1) {
        alignas(64) opmath_t d[kChunk], e[kChunk];
        alignas(64) double scale[kChunk];
        for (int64_t r = r0; r < r1; r += rows_per_chunk) {
          const int64_t nr = std::min(rows_per_chunk, r1 - r), c0 = r * per_row, n = nr * per_row;
          stage_residuals(sp, np, so, per_row, sig, c0, n, d);
          w.rows_to(r, nr, scale);
          with_simd_for<scalar_t>([&]() FS_SIMD_BODY {
            for (int64_t q = 0; q < nr; ++q) scale[q] = gp[r + q] * scale[q];  // g_b w_b, rounded once below
            spread_rows(scale, per_row, 0, n, e);
            for (int64_t t = 0; t < n; ++t) out[c0 + t] = static_cast<scalar_t>(fs_mul(e[t], d[t]));
          });
        }
      });
      return;
    }
    // Staged in chunks of one long row: the same residual as the forward.
    at::parallel_for(0, score.numel(), kGrain, [&](int64_t begin, int64_t end) {
      alignas(64) opmath_t d[kNoiseChunk];
      for (int64_t c0 = begin; c0 < end; c0 += kNoiseChunk) {
        const int64_t n = std::min(kNoiseChunk, end - c0);
        stage_residuals(sp, np, so, per_row, sig, c0, n, d);
        for_each_row_piece(c0, n, per_row, [&](int64_t row, int64_t i, int64_t m) {
          const opmath_t scale = static_cast<opmath_t>(gp[row] * w.at_row(row));
          with_simd_for<scalar_t>([&]() FS_SIMD_BODY { scale_into(scale, d + (i - c0), m, out + i); });
        });
      }
    });
  });
  return grad_score;
}

// The plain door with a C++ autograd node, for eager CPU calls that need the gradient:
// the fused backward with no Python in either direction (a Python autograd.Function, or
// torch.library's autograd, costs more than both kernels at a 2-D toy batch). ``mean``
// returns the batch mean, its backward handing on what MeanBackward would (g / B per row).
struct DsmLossFunction : public torch::autograd::Function<DsmLossFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& score, double sigma,
                            const c10::optional<at::Tensor>& sigma_t, double weight,
                            const c10::optional<at::Tensor>& weight_t, const c10::optional<at::Tensor>& noise,
                            const c10::optional<at::Tensor>& seed_t, int64_t seed,
                            const c10::optional<at::Tensor>& offset_t, int64_t offset, bool mean) {
    at::Tensor loss = dsm_loss_cpu(score, sigma, sigma_t, weight, weight_t, noise, seed_t, seed, offset_t, offset);
    const at::Tensor none;
    ctx->save_for_backward({score, sigma_t.value_or(none), weight_t.value_or(none), noise.value_or(none),
                            seed_t.value_or(none), offset_t.value_or(none)});  // no noise tensor: z is regenerated
    ctx->saved_data["sigma"] = sigma;
    ctx->saved_data["weight"] = weight;
    ctx->saved_data["seed"] = seed;
    ctx->saved_data["offset"] = offset;
    ctx->saved_data["rows"] = mean ? loss.size(0) : int64_t{0};
    return mean ? loss.mean() : loss;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    RECORD_FUNCTION("fastscore::dsm_loss_backward", std::vector<c10::IValue>());
    const auto saved = ctx->get_saved_variables();
    auto given = [](const at::Tensor& t) { return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt; };
    const int64_t rows = ctx->saved_data["rows"].toInt();
    const at::Tensor g = rows ? grads[0].expand({rows}) / rows : grads[0];
    at::Tensor grad_score = dsm_loss_backward_cpu(
        g, saved[0], ctx->saved_data["sigma"].toDouble(), given(saved[1]), ctx->saved_data["weight"].toDouble(),
        given(saved[2]), given(saved[3]), given(saved[4]), ctx->saved_data["seed"].toInt(), given(saved[5]),
        ctx->saved_data["offset"].toInt());
    torch::autograd::variable_list out(11);  // one per forward argument; only score is differentiable
    out[0] = grad_score;
    return out;
  }
};

at::Tensor dsm_loss_autograd(const at::Tensor& score, double sigma, const c10::optional<at::Tensor>& sigma_t,
                             double weight, const c10::optional<at::Tensor>& weight_t,
                             const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& seed_t,
                             int64_t seed, const c10::optional<at::Tensor>& offset_t, int64_t offset, bool mean) {
  return DsmLossFunction::apply(score, sigma, sigma_t, weight, weight_t, noise, seed_t, seed, offset_t, offset, mean);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastscore, CPU, m) {
  m.impl("dsm_loss", &dsm_loss_cpu);
  m.impl("dsm_loss_backward", &dsm_loss_backward_cpu);
}

FASTSCORE_PLAIN(dsm_loss, dsm_loss_cpu);
FASTSCORE_PLAIN(dsm_loss_backward, dsm_loss_backward_cpu);
FASTSCORE_PLAIN(dsm_loss_autograd, dsm_loss_autograd);

}  // namespace fastscore
