// Corrector family, CPU: score_sde's LangevinCorrector step in two passes; pass 1's z is
// kept in a buffer for pass 2, except for tiny and huge batches, which draw it again (below).
//   pass 1: per-row norms of score and z in float64 (row_reduce.h: the sum's order, and
//           so its bits, does not depend on the thread count);
//   host:   eps = (snr * |z| / |s|)^2 * 2 * alpha (batch means or per row), the rule of
//           op_common.h (reference.corrector_step_size's operation order);
//   pass 2: the fused update with per-row (1, eps, sqrt(2 eps)) — the update kernel.
// Per-sample step sizes need only their row's norms: there each parallel task updates its
// rows right after summing them (one pass; the same bits).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <memory>
#include <type_traits>
#include <vector>

#include "cpu_update.h"
#include "exact_sqrt.h"
#include "plain.h"
#include "row_reduce.h"

namespace fastscore {
namespace {

// Batch means add the row norms in fixed blocks of rows (add_pairs' lanes), the blocks in order.
constexpr int64_t kRowsPerBlock = 1024;
struct alignas(64) BlockLanes {
  double v[2 * kLanes] = {};
};

// Per-row norms of the score and of z (the stream, or an explicit noise array): sums of
// squares staged in the compute type and reduced in float64 (row_reduce.h), square roots
// taken in the same parallel task, then rows_done(norms, r0, n) there on each run of
// finished rows; tasks: how rows go to the tasks (row_sums). keep (or null): where the
// stream's z is also written.
template <typename scalar_t, typename noise_t, typename RowsDone>
RowSums<2> row_norms(const scalar_t* s, const noise_t* noise, at::opmath_type<scalar_t>* keep, const HostStream& st,
                     int64_t rows, int64_t per_row, RowsDone&& rows_done, RowTasks tasks) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t base = st.offset * per_row;
  const FactorPairs<2> squares = {{{0, 0}, {1, 1}}};  // |s|^2, |z|^2
  auto stage = [&](int64_t c0, int64_t n, opmath_t (*buf)[kChunk], const opmath_t** f) {
    f[0] = in_compute_type(s + c0, n, buf[0]);
    if (noise != nullptr) {
      f[1] = in_compute_type(noise + c0, n, buf[1]);
      return;
    }
    opmath_t* z = keep != nullptr ? keep + c0 : buf[1];
    if constexpr (std::is_same_v<opmath_t, float>) {  // z straight into where it is read
      stream_normals(st.k0, st.k1, static_cast<uint64_t>(base + c0), n, z);
    } else {
      for_each_noise_chunk(st, base, c0, c0 + n, [&](int64_t i, int64_t count, const float* zf) {
        for (int64_t t = 0; t < count; ++t) z[i - c0 + t] = static_cast<opmath_t>(zf[t]);
      });
    }
    f[1] = z;
  };
  auto finish = [&](std::array<double, 2>* row, int64_t r0, int64_t n) {
    sqrt_in_place(&row[0][0], 2 * n);
    rows_done(row, r0, n);
  };
  return row_sums<2, 2, opmath_t>(rows, per_row, squares, stage, finish, tasks);
}

// Batches of kKeepNoiseMin..kKeepNoiseMax elements keep pass 1's z for pass 2: writing and
// reading it back costs less than drawing it again, even from memory (16x3x256x256, 12 MB
// of z: 2.9-3.4 ms against 4.0-4.1 regenerating with AVX-512, 3.7-4.0 against 6.0-6.2 with
// AVX2, 2 threads). Tiny batches regenerate (drawing a few values costs less than an
// allocation), and so do huge ones, whose buffer (up to 64 MB fp32, 128 MB fp64 here)
// would be a surprise.
constexpr int64_t kKeepNoiseMin = 1024, kKeepNoiseMax = 1 << 24;

// Pass 1's z of n elements of dtype. Up to kKeptCacheBytes in memory the calling thread
// reuses from call to call: a fresh buffer of megabytes comes from mmap, and its page faults
// come each call (146 a call at 16x3x256x256 here, where the kernel backs it with huge pages:
// 2.04-2.10x the generator's time -> 1.96-2.02x; with 4 KB pages, 3072 faults). Held until
// the thread exits: at most the size of one 16x3x512x512 fp32 batch.
constexpr size_t kKeptCacheBytes = size_t{48} << 20;

at::Tensor kept_noise(int64_t n, at::ScalarType dtype) {
  const size_t need = (static_cast<size_t>(n) * at::elementSize(dtype) + 63) / 64 * 64;
  if (need > kKeptCacheBytes) return at::empty({n}, at::TensorOptions().dtype(dtype));
  struct FreeBytes {
    void operator()(void* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<void, FreeBytes> bytes;
  thread_local size_t capacity = 0;
  if (need > capacity) {
    bytes.reset();  // the old buffer goes before the new one comes
    capacity = 0;
    bytes.reset(std::aligned_alloc(64, need));
    TORCH_CHECK(bytes != nullptr, "langevin_corrector_: cannot allocate ", need, " bytes for the kept noise");
    capacity = need;
  }
  return at::from_blob(bytes.get(), {n}, at::TensorOptions().dtype(dtype));
}

// The per-sample rule's one pass from this many elements on: 0.87-0.95x the two passes'
// time at 2**17..2**22 elements (2 threads, AVX-512); below, the batch stays in cache
// between the two passes anyway and the per-row update calls cost as much as they save.
constexpr int64_t kOnePassMin = 1 << 17;

void langevin_corrector_cpu(at::Tensor x, const c10::optional<at::Tensor>& x_mean, const at::Tensor& score,
                            double snr, double alpha, const c10::optional<at::Tensor>& alpha_t, bool per_sample,
                            const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& seed_t,
                            int64_t seed, const c10::optional<at::Tensor>& offset_t, int64_t offset) {
  const HostStream st = host_stream(make_stream(seed_t, seed, offset_t, offset, x.device()));
  if (x.numel() == 0) return;
  const Coef alpha_c = make_coef(alpha, alpha_t, x, "alpha");
  UpdateTensors t = make_update_tensors(x, x_mean, x, {score}, noise);
  const auto geometry = row_geometry(x);
  const int64_t rows = geometry.first, per_row = geometry.second;
  // The rule: on the batch means of the norms (as score_sde and diffusers), or per row.
  // Batch means: the tasks add their blocks' lanes where there are blocks for every thread
  // (else this thread does, after). Per row: the tasks also compute the rows' eps.
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  std::vector<BlockLanes> lanes(per_sample ? 0 : blocks);
  const int threads = at::get_num_threads();
  const bool in_tasks = !per_sample && blocks >= threads;
  // Per row, in one pass: each task updates its rows right after their norms, so the update
  // reads z, score and x from cache, not memory — for batches beyond the caches, where the
  // rows go to the tasks evenly (short rows always; long rows a whole row per task: a
  // multiple of the threads, or many).
  const bool one_pass = per_sample && x.numel() >= kOnePassMin &&
                        (per_row <= kShortRow || rows % threads == 0 || rows >= 8 * threads);
  std::unique_ptr<double[]> step;  // per row: eps_r, then sqrt(2 eps_r) (every row written)
  if (per_sample || alpha_c.per_row()) step.reset(new double[2 * rows]);
  const at::Tensor given = t.noise;  // an explicit noise tensor, or undefined (the stream)
  at::Tensor kept;  // z of pass 1, for pass 2 (kKeepNoiseMin..kKeepNoiseMax elements)
  if (!given.defined() && x.numel() >= kKeepNoiseMin && x.numel() <= kKeepNoiseMax) {
    kept = kept_noise(x.numel(), compute_type(x.scalar_type()));
    t.noise = kept;  // the update reads the same z
  }
  UpdateCoefs u;
  if (per_sample) u = corrector_update_coefs(step.get(), rows, x_mean.has_value());
  auto rows_done = [&](std::array<double, 2>* norm, int64_t r0, int64_t n) {
    if (per_sample) {
      alpha_c.for_row_pieces(r0, n, [&](int64_t q0, int64_t m, const double* alpha_r) {
        for (int64_t q = 0; q < m; ++q) {
          const double eps = corrector_eps(norm[q0 + q][0], norm[q0 + q][1], snr, alpha_r[q]);
          step[r0 + q0 + q] = eps;
          step[rows + r0 + q0 + q] = eps * 2.0;
        }
      });
      sqrt_in_place(&step[rows + r0], n);
      if (one_pass) update_cpu_range(t, u, st, r0 * per_row, (r0 + n) * per_row);
    } else if (in_tasks) {
      for (int64_t r = r0, end = r0 + n; r < end;) {  // the run's pieces in each block
        const int64_t piece = std::min(end, (r / kRowsPerBlock + 1) * kRowsPerBlock) - r;
        add_pairs(&norm[r - r0][0], r, piece, lanes[r / kRowsPerBlock].v);
        r += piece;
      }
    }
  };
  // Rows go to the tasks in whole blocks where the tasks add the blocks' lanes; the host reads
  // the norms only where they do not (per row, the tasks take the step sizes).
  const RowTasks tasks{in_tasks ? kRowsPerBlock : 1, one_pass, !(in_tasks || per_sample)};
  RowSums<2> norms;  // per row: |score|, |z|
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "corrector_norms", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* sp = t.ys[0].data_ptr<scalar_t>();
    opmath_t* keep = kept.defined() ? kept.data_ptr<opmath_t>() : nullptr;
    norms = given.defined()
                ? row_norms(sp, given.data_ptr<opmath_t>(), keep, st, rows, per_row, rows_done, tasks)
                : row_norms(sp, static_cast<const float*>(nullptr), keep, st, rows, per_row, rows_done, tasks);
  });
  if (one_pass) {
    t.finish();
    return;
  }
  if (!per_sample) {
    double gm = 0.0, nm = 0.0;  // batch means: blocks in order
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t r0 = b * kRowsPerBlock;
      if (!in_tasks) add_pairs(&norms[r0][0], r0, std::min(kRowsPerBlock, rows - r0), lanes[b].v);
      double total[2];
      pair_totals(lanes[b].v, total);
      gm += total[0];
      nm += total[1];
    }
    gm /= static_cast<double>(rows);
    nm /= static_cast<double>(rows);
    if (!alpha_c.per_row()) {
      // One eps for every row: plain scalars, so the update runs in one vectorised segment.
      const double eps = corrector_eps(gm, nm, snr, alpha_c.at_row(0));
      const double both[2] = {eps, std::sqrt(eps * 2.0)};
      u = corrector_update_coefs(both, 1, x_mean.has_value());
      for (int o = 0; o < u.n_out; ++o) u.slot[o][1] = value_coef(both[0]);
      u.slot[0][2] = value_coef(both[1]);
      u.per_row = false;
    } else {
      for (int64_t r = 0; r < rows; ++r) {
        step[r] = corrector_eps(gm, nm, snr, alpha_c.at_row(r));
        step[rows + r] = std::sqrt(step[r] * 2.0);
      }
      u = corrector_update_coefs(step.get(), rows, x_mean.has_value());
    }
  }
  update_cpu_run(t, u, st);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastscore, CPU, m) { m.impl("langevin_corrector_", &langevin_corrector_cpu); }

FASTSCORE_PLAIN(langevin_corrector_, langevin_corrector_cpu, 0, 1);

}  // namespace fastscore
