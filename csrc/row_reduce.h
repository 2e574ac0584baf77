// Deterministic per-row float64 reductions for the CPU ops (corrector norms, DSM loss,
// sliced score matching). Each sum is the dot product of two staged factor arrays (values
// in the compute type, widened exactly): a row is cut into fixed blocks, a block is
// visited in chunks of kChunk elements folded into kLanes fixed float64 lanes (element t
// of a chunk into lane t % kLanes), lanes then blocks are added in a fixed order. So a
// sum's bits depend on the data only — not on the thread count or the schedule.
//
// Rows of at most kShortRow elements (a 2-D batch: thousands of rows of 2) are staged many
// rows at a time and folded row by row in exactly that lane order, so they cost no
// per-row overhead and give the same bits as the general path.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu_features.h"

namespace fastscore {

constexpr int64_t kReduceBlock = 16384;  // elements per partial sum
constexpr int64_t kChunk = 1024;         // elements staged per pass (the noise generator's chunk)
constexpr int64_t kShortRow = 256;       // rows up to this long are staged many at a time
constexpr int kLanes = 16;
constexpr int64_t kReduceGrain = 8192;    // elements per parallel task
constexpr int64_t kShortRowGrain = 4096;  // elements per task over short rows (the update's grain)

// lanes[l] += a[g + l] * b[g + l] for g < n, n a multiple of kLanes (the caller
// zero-pads with zero_pad). Defined in row_reduce.cpp, built per ISA through with_simd;
// float products (squares when a == b) run an exact fma kernel there (same bits, fewer uops).
void accumulate_dot(const float* a, const float* b, double* lanes, int64_t n);
void accumulate_dot(const double* a, const double* b, double* lanes, int64_t n);
// Both lanes0 += a0 . b0 and lanes1 += a1 . b1 (as two accumulate_dot calls), in one pass.
void accumulate_dot2(const float* a0, const float* b0, double* lanes0, const float* a1, const float* b1,
                     double* lanes1, int64_t n);
void accumulate_dot2(const double* a0, const double* b0, double* lanes0, const double* a1, const double* b1,
                     double* lanes1, int64_t n);

// Rows q < nr of a and b (rows laid end to end, per_row <= kShortRow): out[q] = the
// row's accumulate_dot lanes added in lane order — (((0 + a_0 b_0) + a_1 b_1) + ...) for rows
// of at most kLanes elements (one product per lane). Many rows per call: no per-row dispatch.
void fold_rows(const float* a, const float* b, int64_t nr, int64_t per_row, double* out);
void fold_rows(const double* a, const double* b, int64_t nr, int64_t per_row, double* out);

// Sums of pairs (v[2 r], v[2 r + 1]) in 2 kLanes fixed lanes: pair r of a run starting at pair
// index first goes to lanes 2 ((first + r) % kLanes) + k, k < 2, added in r order — so a sum
// split into runs at any points gives the bits of one run. pair_totals adds the lanes in order.
void add_pairs(const double* v, int64_t first, int64_t n, double* lanes);
void pair_totals(const double* lanes, double* total);

// Zero-pads buf[n, round_up(n, kLanes)) and returns that rounded length.
template <typename T>
inline int64_t zero_pad(T* buf, int64_t n) {
  const int64_t padded = (n + kLanes - 1) / kLanes * kLanes;
  for (int64_t t = n; t < padded; ++t) buf[t] = T(0);
  return padded;
}

// Calls fn(row, i, n) for the pieces of flat elements [c0, c0 + count) that lie in one row.
// One division per call, none per row: a 2-D batch has thousands of two-element rows.
template <typename Fn>
inline void for_each_row_piece(int64_t c0, int64_t count, int64_t per_row, Fn&& fn) {
  const int64_t end = c0 + count;
  int64_t row = c0 / per_row, row_end = (row + 1) * per_row;
  for (int64_t i = c0; i < end; ++row, row_end += per_row) {
    const int64_t n = std::min(end, row_end) - i;
    fn(row, i, n);
    i += n;
  }
}

// dst[t] = value of the row of element t, for t < n: rows of per_row elements, the first
// starting at column col0. Rows of 1..4 elements with the width known, so the stores vectorise
// (inside with_simd, at the CPU's width).
template <int R, typename T>
FS_SIMD_INLINE void spread_fixed(const double* v, int64_t nr, T* dst) {
  for (int64_t q = 0; q < nr; ++q) {
    for (int c = 0; c < R; ++c) dst[q * R + c] = static_cast<T>(v[q]);
  }
}

template <typename T>
FS_SIMD_INLINE void spread_rows(const double* v, int64_t per_row, int64_t col0, int64_t n, T* dst) {
  int64_t t = 0, q = 0;
  if (col0 != 0) {  // the rest of the first row
    for (const int64_t m = std::min(n, per_row - col0); t < m; ++t) dst[t] = static_cast<T>(v[0]);
    q = 1;
  }
  const int64_t full = (n - t) / per_row;
  switch (per_row) {
    case 1: spread_fixed<1>(v + q, full, dst + t); break;
    case 2: spread_fixed<2>(v + q, full, dst + t); break;
    case 3: spread_fixed<3>(v + q, full, dst + t); break;
    case 4: spread_fixed<4>(v + q, full, dst + t); break;
    default:
      for (int64_t r = 0; r < full; ++r) {
        for (int64_t c = 0; c < per_row; ++c) dst[t + r * per_row + c] = static_cast<T>(v[q + r]);
      }
  }
  t += full * per_row;
  q += full;
  for (; t < n; ++t) dst[t] = static_cast<T>(v[q]);  // a partial last row
}

// Values [v, v + n) in the compute type T: v itself when it already is, else converted into buf.
template <typename T, typename V>
inline const T* in_compute_type(const V* v, int64_t n, T* buf) {
  if constexpr (std::is_same_v<T, V>) {
    return v;
  } else {
    for (int64_t t = 0; t < n; ++t) buf[t] = static_cast<T>(v[t]);
    return buf;
  }
}

// Which staged factors each sum multiplies: sum k = f[pairs[k].first] . f[pairs[k].second].
template <int NSUM>
using FactorPairs = std::array<std::pair<int, int>, NSUM>;

// A sum's lanes added in lane order.
inline double lane_total(const double* lanes) {
  double total = 0.0;
  for (int l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

// Per-row sums, [rows][NSUM], not zero-filled: every path of row_sums writes every row (a
// zero fill of 4096 rows costs more than a two-element-row reduction's arithmetic).
template <int NSUM>
class RowSums {
 public:
  RowSums() = default;
  explicit RowSums(int64_t rows) : v_(new std::array<double, NSUM>[rows]) {}
  std::array<double, NSUM>& operator[](int64_t r) { return v_[r]; }
  const std::array<double, NSUM>& operator[](int64_t r) const { return v_[r]; }
  std::array<double, NSUM>* data() { return v_.get(); }

 private:
  std::unique_ptr<std::array<double, NSUM>[]> v_;
};

// Leaves the rows' sums as they are.
struct KeepSums {
  template <typename Row>
  void operator()(Row*, int64_t, int64_t) const {}
};

// out[k] = sum k over flat elements [begin, end) (one row's block, at most kReduceBlock):
// chunks folded into the lanes (whole groups: a partial one is zero-padded in buf), the
// lanes added in order. The general path's unit; its bits do not depend on who calls it.
template <int NSUM, int NF, typename T, typename StageFn>
void block_sums(int64_t begin, int64_t end, const FactorPairs<NSUM>& pairs, StageFn& stage, T (*buf)[kChunk],
                double* out) {
  const T* f[NF];
  alignas(64) double lanes[NSUM][kLanes] = {};
  for (int64_t c0 = begin; c0 < end; c0 += kChunk) {
    const int64_t n = std::min(kChunk, end - c0);
    stage(c0, n, buf, f);
    int64_t padded = 0;
    const T* g[NF];
    for (int j = 0; j < NF; ++j) {  // the lane kernel reads whole groups: pad a partial one with zeros
      g[j] = f[j];
      if (n % kLanes != 0) {
        if (f[j] != buf[j]) std::copy(f[j], f[j] + n, buf[j]);
        g[j] = buf[j];
      }
      padded = zero_pad(buf[j], n);
    }
    int s = 0;
    for (; s + 2 <= NSUM; s += 2) {  // two sums per pass: twice the add chains in flight
      accumulate_dot2(g[pairs[s].first], g[pairs[s].second], lanes[s], g[pairs[s + 1].first],
                      g[pairs[s + 1].second], lanes[s + 1], padded);
    }
    if (s < NSUM) accumulate_dot(g[pairs[s].first], g[pairs[s].second], lanes[s], padded);
  }
  for (int s = 0; s < NSUM; ++s) out[s] = lane_total(lanes[s]);
}

// How row_sums splits its work between parallel tasks.
struct RowTasks {
  int64_t rows = 1;         // short rows go to tasks in multiples of this (fixed blocks a finish may sum)
  bool whole_rows = false;  // longer rows: a whole row per task, finished in it (else split into blocks)
  bool keep_sums = true;    // false: finish consumes short rows' sums in the task; none are returned
};

// sums[r][k] for rows r. stage(c0, n, buf, f) points f[j] at factor j of flat elements
// [c0, c0 + n) (n <= kChunk): at the data itself where it is already in the compute type,
// or at buf[j] after filling it. [c0, c0 + n) is part of one row, or whole rows (short rows).
// finish(sums, r, n) runs once on every finished row, n rows at a time (sums[q] of row
// r + q), in the parallel task where short rows are summed (the corrector takes its square
// roots there). Longer rows are split into blocks between tasks and finished after them
// all, or with tasks.whole_rows summed a row per task and finished in it (the per-sample
// corrector's update then reads the row's z from cache). Every way gives the same bits.
// With !tasks.keep_sums short rows' sums stay in the task (an array of them, 8 bytes a
// row and sum, would move more bytes than rows of one or two floats) and the result is empty.
template <int NSUM, int NF, typename T, typename StageFn, typename FinishFn = KeepSums>
RowSums<NSUM> row_sums(int64_t rows, int64_t per_row, const FactorPairs<NSUM>& pairs, StageFn&& stage,
                       FinishFn&& finish = {}, RowTasks tasks = {}) {
  const bool short_rows = per_row <= kShortRow && per_row > 0;
  RowSums<NSUM> sums(short_rows && !tasks.keep_sums ? 0 : rows);
  if (rows == 0 || per_row == 0) {  // rows of no elements sum to 0
    for (int64_t r = 0; r < rows; ++r) sums[r].fill(0.0);
    finish(sums.data(), 0, rows);
    return sums;
  }
  if (short_rows) {  // whole rows per chunk, folded one row at a time
    const int64_t rows_per_chunk = kChunk / per_row;
    const int64_t task_rows = tasks.rows;
    const int64_t units = (rows + task_rows - 1) / task_rows;
    const int64_t grain = std::max<int64_t>(1, kShortRowGrain / per_row / task_rows);
    at::parallel_for(0, units, grain, [&](int64_t u0, int64_t u1) {
      const int64_t r0 = u0 * task_rows, r1 = std::min(rows, u1 * task_rows);
      alignas(64) T buf[NF][kChunk];
      alignas(64) double total[NSUM][kChunk];  // each sum's rows apart: whole-vector stores
      std::array<double, NSUM> local[kChunk];  // the chunk's sums, where none are kept
      const T* f[NF];
      for (int64_t r = r0; r < r1; r += rows_per_chunk) {
        const int64_t nr = std::min(rows_per_chunk, r1 - r);
        stage(r * per_row, nr * per_row, buf, f);
        for (int k = 0; k < NSUM; ++k) fold_rows(f[pairs[k].first], f[pairs[k].second], nr, per_row, total[k]);
        std::array<double, NSUM>* out = tasks.keep_sums ? &sums[r] : local;
        for (int64_t q = 0; q < nr; ++q) {
          for (int k = 0; k < NSUM; ++k) out[q][k] = total[k][q];
        }
        finish(out, r, nr);
      }
    });
    return sums;
  }
  const int64_t blocks_per_row = (per_row + kReduceBlock - 1) / kReduceBlock;
  auto block_range = [&](int64_t row, int64_t k) {  // flat elements of block k of a row
    const int64_t begin = row * per_row + k * kReduceBlock;
    return std::make_pair(begin, std::min(row * per_row + per_row, begin + kReduceBlock));
  };
  if (tasks.whole_rows) {  // the blocks of a row in order, in one task: the bits of the split below
    at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
      alignas(64) T buf[NF][kChunk];
      for (int64_t r = r0; r < r1; ++r) {
        sums[r].fill(0.0);
        for (int64_t k = 0; k < blocks_per_row; ++k) {
          double part[NSUM];
          const auto [begin, end] = block_range(r, k);
          block_sums<NSUM, NF>(begin, end, pairs, stage, buf, part);
          for (int s = 0; s < NSUM; ++s) sums[r][s] += part[s];
        }
        finish(&sums[r], r, 1);
      }
    });
    return sums;
  }
  std::vector<std::array<double, NSUM>> partial(rows * blocks_per_row);
  const int64_t grain = std::max<int64_t>(1, kReduceGrain / std::min(per_row, kReduceBlock));
  at::parallel_for(0, rows * blocks_per_row, grain, [&](int64_t b0, int64_t b1) {
    alignas(64) T buf[NF][kChunk];
    for (int64_t b = b0; b < b1; ++b) {
      const auto [begin, end] = block_range(b / blocks_per_row, b % blocks_per_row);
      block_sums<NSUM, NF>(begin, end, pairs, stage, buf, partial[b].data());
    }
  });
  for (int64_t r = 0; r < rows; ++r) {
    sums[r].fill(0.0);
    for (int64_t k = 0; k < blocks_per_row; ++k) {
      for (int s = 0; s < NSUM; ++s) sums[r][s] += partial[r * blocks_per_row + k][s];
    }
  }
  finish(sums.data(), 0, rows);
  return sums;
}

}  // namespace fastscore
