// Update family, CPU: the fused linear combination
//     out_o = ((a x + b_1 y_1) + ... + b_K y_K) + c z          (K <= 4 tensors y, 1 or 2 outputs)
// in one pass, z the noise stream or an explicit tensor. Behind step_ (in place: out is
// x), update_ (into another tensor) and lincomb (a new tensor, differentiable):
// langevin_step_, perturb, every predictor and the k-diffusion samplers' steps.
// Math is fp32 (fp64 for fp64 storage), each product and sum rounded in exactly that
// order, so the bits equal the reference (fastscore/reference.py, update_).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>

#include "cpu_features.h"
#include "cpu_update.h"
#include "plain.h"
#include "row_reduce.h"

namespace fastscore {
namespace {

template <typename scalar_t>
struct UpdatePtrs {
  using opmath_t = at::opmath_type<scalar_t>;
  scalar_t* out;
  scalar_t* out2;  // null: one output
  const scalar_t* x;
  const scalar_t* y[kMaxTerms];
  const opmath_t* noise;  // null: the stream
  int64_t per_row;
};

// The element loop of one row segment (coefficients constant over it). Compile-time
// flags keep the branches out of the loop body so it vectorises; z is float (the
// stream) or opmath_t (an explicit noise tensor). out may be x itself: each element is
// read before it is written. Run through with_simd (the SIMD width of this CPU).
template <int K, bool kOut2, bool kNoise1, bool kNoise2, typename scalar_t, typename ZT>
FS_SIMD_INLINE void update_segment(const UpdatePtrs<scalar_t>& p, int64_t i, int64_t n,
                                   const at::opmath_type<scalar_t> (&c)[2][kMaxSlots], const ZT* z) {
  using opmath_t = at::opmath_type<scalar_t>;
  opmath_t c0[K + 2], c1[K + 2];
  for (int s = 0; s < K + 2; ++s) {
    c0[s] = c[0][s];
    c1[s] = c[1][s];
  }
  const scalar_t* x = p.x + i;
  scalar_t* out = p.out + i;
#pragma GCC ivdep
  for (int64_t t = 0; t < n; ++t) {
    const opmath_t xv = static_cast<opmath_t>(x[t]);
    opmath_t m = fs_mul(c0[0], xv);
    for (int k = 0; k < K; ++k) m = fs_add(m, fs_mul(c0[1 + k], static_cast<opmath_t>(p.y[k][i + t])));
    if constexpr (kNoise1) m = fs_add(m, fs_mul(c0[K + 1], static_cast<opmath_t>(z[t])));
    if constexpr (kOut2) {
      opmath_t m2 = fs_mul(c1[0], xv);
      for (int k = 0; k < K; ++k) m2 = fs_add(m2, fs_mul(c1[1 + k], static_cast<opmath_t>(p.y[k][i + t])));
      if constexpr (kNoise2) m2 = fs_add(m2, fs_mul(c1[K + 1], static_cast<opmath_t>(z[t])));
      p.out2[i + t] = static_cast<scalar_t>(m2);
    }
    out[t] = static_cast<scalar_t>(m);
  }
}

// Splits [i0, i0 + count) where the row (and so a per-sample coefficient) changes and
// calls fn(i, n, coefficient values of that row).
template <typename opmath_t, typename Fn>
inline void for_each_row_segment(const UpdateCoefs& u, int64_t i0, int64_t count, int64_t per_row,
                                 opmath_t (&c)[2][kMaxSlots], Fn&& fn) {
  auto load = [&](int64_t row) {
    for (int o = 0; o < u.n_out; ++o) {
      for (int s = 0; s < u.n_terms + 2; ++s) c[o][s] = static_cast<opmath_t>(u.slot[o][s].at_row(row));
    }
  };
  if (!u.per_row) {
    fn(i0, count);
    return;
  }
  const int64_t end = i0 + count;
  int64_t row = i0 / per_row, row_end = (row + 1) * per_row;  // no division per row (rows of 2 are common)
  for (int64_t i = i0; i < end; ++row, row_end += per_row) {
    const int64_t n = std::min(end, row_end) - i;
    load(row);
    fn(i, n);
    i += n;
  }
}

// Rows up to this long with per-row coefficients take update_short_rows: a call per row
// (for_each_row_segment) costs more than the row's few elements.
constexpr int64_t kShortUpdateRow = 16;

// Flat elements [i0, i0 + count) of short rows with per-row coefficients: each slot's
// values spread over a piece of kPiece elements (one read per row, the kind test outside
// the loop), then one loop over the piece with per-element coefficients — the same
// operations in the same order as update_segment, so the same bits. Run through with_simd.
template <int K, bool kOut2, bool kNoise1, bool kNoise2, typename scalar_t, typename ZT>
FS_SIMD_INLINE void update_short_rows(const UpdatePtrs<scalar_t>& p, const UpdateCoefs& u, int64_t i0, int64_t count,
                                      const ZT* z) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int64_t kPiece = 256;
  constexpr int kOuts = kOut2 ? 2 : 1;
  alignas(64) opmath_t e[kOuts][K + 2][kPiece];
  alignas(64) double row_values[kPiece];
  const int64_t per_row = p.per_row;
  for (int64_t b = 0; b < count; b += kPiece) {
    const int64_t i = i0 + b, n = std::min(kPiece, count - b);
    const int64_t r0 = i / per_row, col0 = i - r0 * per_row, nr = (col0 + n + per_row - 1) / per_row;
    for (int o = 0; o < kOuts; ++o) {
      for (int sl = 0; sl < K + 2; ++sl) {
        const Coef& c = u.slot[o][sl];
        opmath_t* dst = e[o][sl];
        if (!c.per_row()) {
          const opmath_t v = static_cast<opmath_t>(c.at_row(0));
          for (int64_t t = 0; t < n; ++t) dst[t] = v;
          continue;
        }
        c.rows_to(r0, nr, row_values);
        spread_rows(row_values, per_row, col0, n, dst);
      }
    }
#pragma GCC ivdep
    for (int64_t t = 0; t < n; ++t) {
      const opmath_t xv = static_cast<opmath_t>(p.x[i + t]);
      opmath_t m = fs_mul(e[0][0][t], xv);
      for (int k = 0; k < K; ++k) m = fs_add(m, fs_mul(e[0][1 + k][t], static_cast<opmath_t>(p.y[k][i + t])));
      if constexpr (kNoise1) m = fs_add(m, fs_mul(e[0][K + 1][t], static_cast<opmath_t>(z[b + t])));
      if constexpr (kOut2) {
        opmath_t m2 = fs_mul(e[kOuts - 1][0][t], xv);
        for (int k = 0; k < K; ++k) {
          m2 = fs_add(m2, fs_mul(e[kOuts - 1][1 + k][t], static_cast<opmath_t>(p.y[k][i + t])));
        }
        if constexpr (kNoise2) m2 = fs_add(m2, fs_mul(e[kOuts - 1][K + 1][t], static_cast<opmath_t>(z[b + t])));
        p.out2[i + t] = static_cast<scalar_t>(m2);
      }
      p.out[i + t] = static_cast<scalar_t>(m);
    }
  }
}

// Rows with per-row coefficients from this long on take stream_update, a call per row.
constexpr int64_t kFusedUpdateRow = 1024;

template <int K, bool kOut2, bool kNoise1, bool kNoise2, typename scalar_t>
void update_range(const UpdatePtrs<scalar_t>& p, const UpdateCoefs& u, const HostStream& s, int64_t begin,
                  int64_t end) {
  using opmath_t = at::opmath_type<scalar_t>;
  opmath_t c[2][kMaxSlots] = {};
  if (!u.per_row) {
    for (int o = 0; o < u.n_out; ++o) {
      for (int k = 0; k < K + 2; ++k) c[o][k] = static_cast<opmath_t>(u.slot[o][k].at_row(0));
    }
  }
  const int64_t base = s.offset * p.per_row;  // the stream index of element 0
  // z: float (the stream), opmath_t (an explicit noise array) or none (no noise term).
  auto short_rows = [&](int64_t i0, int64_t count, const auto* z) {
    with_simd_for<scalar_t>([&]() FS_SIMD_BODY {
      update_short_rows<K, kOut2, kNoise1, kNoise2>(p, u, i0, count, z);
    });
  };
  auto segments = [&](int64_t i0, int64_t count, const auto* z) {
    for_each_row_segment(u, i0, count, p.per_row, c, [&](int64_t i, int64_t n) {
      with_simd_for<scalar_t>([&]() FS_SIMD_BODY {
        update_segment<K, kOut2, kNoise1, kNoise2>(p, i, n, c, z == nullptr ? z : z + (i - i0));
      });
    });
  };
  auto run = [&](auto&& part) {
    if constexpr (!(kNoise1 || kNoise2)) {
      part(begin, end - begin, static_cast<const float*>(nullptr));
    } else if (p.noise != nullptr) {
      part(begin, end - begin, p.noise + begin);
    } else {
      for_each_noise_chunk(s, base, begin, end,
                           [&](int64_t i0, int64_t count, const float* z) { part(i0, count, z); });
    }
  };
  // float32 x (+ one y) + z, one output: the generator applies the update itself
  // (stream_update), a call per range of constant coefficients - unless rows with their
  // own coefficients are short, where the chunked path's one call per 1024 values is cheaper.
  if constexpr (std::is_same_v<scalar_t, float> && K <= 1 && kNoise1 && !kOut2) {
    if (p.noise == nullptr && (!u.per_row || p.per_row >= kFusedUpdateRow)) {
      for_each_row_segment(u, begin, end - begin, p.per_row, c, [&](int64_t i, int64_t n) {
        const float b = K == 1 ? c[0][1] : 0.0f;
        stream_update(s.k0, s.k1, static_cast<uint64_t>(base + i), n,
                      {p.out + i, p.x + i, K == 1 ? p.y[0] + i : nullptr, c[0][0], b, c[0][K + 1]});
      });
      return;
    }
  }
  if (u.per_row && p.per_row <= kShortUpdateRow) {
    run(short_rows);
  } else {
    run(segments);
  }
}

// Elements [begin, end): split between parallel tasks, or all in the calling thread.
void update_cpu_dispatch(UpdateTensors& t, const UpdateCoefs& u, const HostStream& s, int64_t begin, int64_t end,
                         bool parallel) {
  const int64_t per_row = row_geometry(t.x).second;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.x.scalar_type(), "fastscore_update", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    UpdatePtrs<scalar_t> p{t.out.data_ptr<scalar_t>(),
                           t.out2.defined() ? t.out2.data_ptr<scalar_t>() : nullptr,
                           t.x.data_ptr<scalar_t>(),
                           {},
                           t.noise.defined() ? t.noise.data_ptr<opmath_t>() : nullptr,
                           per_row};
    for (size_t k = 0; k < t.ys.size(); ++k) p.y[k] = t.ys[k].data_ptr<scalar_t>();
    // out2: none, without noise (a mean), or with noise: three cases, not four.
    const int out2_mode = u.n_out == 1 ? 0 : u.noise_term[1] ? 2 : 1;
    with_terms(u.n_terms, [&](auto K) {
      with_bool(u.noise_term[0], [&](auto noise1) {
        auto launch = [&](auto out2, auto noise2) {
          auto range = [&](int64_t b, int64_t e) {
            update_range<decltype(K)::value, decltype(out2)::value, decltype(noise1)::value,
                         decltype(noise2)::value>(p, u, s, b, e);
          };
          if (parallel) {
            at::parallel_for(begin, end, kGrain, range);
          } else {
            range(begin, end);
          }
        };
        if (out2_mode == 0) launch(std::false_type{}, std::false_type{});
        else if (out2_mode == 1) launch(std::true_type{}, std::false_type{});
        else launch(std::true_type{}, std::true_type{});
      });
    });
  });
}

}  // namespace

void update_cpu_run(UpdateTensors& t, const UpdateCoefs& coefs, const HostStream& s) {
  if (t.x.numel() != 0) update_cpu_dispatch(t, coefs, s, 0, t.x.numel(), true);
  t.finish();
}

void update_cpu_range(UpdateTensors& t, const UpdateCoefs& coefs, const HostStream& s, int64_t begin, int64_t end) {
  if (begin < end) update_cpu_dispatch(t, coefs, s, begin, end, false);
}

namespace {

void run_cpu(UpdateTensors& t, const UpdateCoefs& coefs, const Stream& s) { update_cpu_run(t, coefs, host_stream(s)); }
using Ops = UpdateOps<run_cpu>;

}  // namespace

TORCH_LIBRARY_IMPL(fastscore, CPU, m) {
  m.impl("step_", &Ops::step_);
  m.impl("update_", &Ops::update_);
  m.impl("lincomb", &Ops::lincomb);
}

FASTSCORE_PLAIN(step_, Ops::step_, 0, 1);
FASTSCORE_PLAIN(update_, Ops::update_, 0, 1);
FASTSCORE_PLAIN(lincomb, Ops::lincomb);

}  // namespace fastscore
