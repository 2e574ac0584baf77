// Deterministic per-row float64 reductions for the CPU ops (corrector norms, DSM loss,
// sliced score matching). Each sum is the dot product of two staged factor arrays (values
// in the compute type, widened exactly): a row is cut into fixed blocks, a block is
// visited in chunks of kChunk elements folded into kLanes fixed float64 lanes (element t
// of a chunk into lane t % kLanes), lanes then blocks are added in a fixed order. So a
// sum's bits depend on the data only — not on the thread count or the schedule.
//
// Rows of at most kChunk elements (a 2-D batch: thousands of rows of 2) are staged many
// rows at a time and folded row by row in exactly that lane order, so they cost no
// per-row overhead and give the same bits as the general path.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>
#include <vector>

namespace fastscore {

constexpr int64_t kReduceBlock = 16384;  // elements per partial sum
constexpr int64_t kChunk = 256;          // elements staged per lane pass
constexpr int kLanes = 16;
constexpr int64_t kReduceGrain = 8192;    // elements per parallel task
constexpr int64_t kShortRowGrain = 4096;  // elements per task over short rows (the update's grain)

// lanes[l] += a[g + l] * b[g + l] for g < n, n a multiple of kLanes (the caller
// zero-pads with zero_pad). Defined in row_reduce.cpp, multiversioned.
void accumulate_dot(const float* a, const float* b, double* lanes, int64_t n);
void accumulate_dot(const double* a, const double* b, double* lanes, int64_t n);

// Zero-pads buf[n, round_up(n, kLanes)) and returns that rounded length.
template <typename T>
inline int64_t zero_pad(T* buf, int64_t n) {
  const int64_t padded = (n + kLanes - 1) / kLanes * kLanes;
  for (int64_t t = n; t < padded; ++t) buf[t] = T(0);
  return padded;
}

// Calls fn(row, i, n) for the pieces of flat elements [c0, c0 + count) that lie in one row.
template <typename Fn>
inline void for_each_row_piece(int64_t c0, int64_t count, int64_t per_row, Fn&& fn) {
  for (int64_t i = c0, end = c0 + count; i < end;) {
    const int64_t row = i / per_row, n = std::min(end, (row + 1) * per_row) - i;
    fn(row, i, n);
    i += n;
  }
}

// fn(R) with R() the row length as a compile-time constant for the shortest rows (a 2-D or
// 3-D batch), so their row loops unroll; a run-time value otherwise.
template <typename Fn>
inline void with_short_row(int64_t per_row, Fn&& fn) {
  switch (per_row) {
    case 1: fn([] { return int64_t{1}; }); break;
    case 2: fn([] { return int64_t{2}; }); break;
    case 3: fn([] { return int64_t{3}; }); break;
    case 4: fn([] { return int64_t{4}; }); break;
    default: fn([per_row] { return per_row; });
  }
}

// Which staged factors each sum multiplies: sum k = f[pairs[k].first] . f[pairs[k].second].
template <int NSUM>
using FactorPairs = std::array<std::pair<int, int>, NSUM>;

// sums[r][k] for rows r. stage(c0, n, f) fills f[j][t] (t < n, n <= kChunk) with factor j
// at flat element c0 + t; [c0, c0 + n) is part of one row, or whole rows (short rows).
template <int NSUM, int NF, typename T, typename StageFn>
std::vector<std::array<double, NSUM>> row_sums(int64_t rows, int64_t per_row, const FactorPairs<NSUM>& pairs,
                                               StageFn&& stage) {
  std::vector<std::array<double, NSUM>> sums(rows);
  for (auto& s : sums) s.fill(0.0);
  if (rows == 0 || per_row == 0) return sums;
  if (per_row <= kChunk) {  // whole rows per chunk, folded one row at a time
    const int64_t rows_per_chunk = kChunk / per_row;
    const int64_t grain = std::max<int64_t>(1, kShortRowGrain / per_row);
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
      alignas(64) T f[NF][kChunk];
      for (int64_t r = r0; r < r1; r += rows_per_chunk) {
        const int64_t nr = std::min(rows_per_chunk, r1 - r);
        stage(r * per_row, nr * per_row, f);
        for (int k = 0; k < NSUM; ++k) {
          const T* a = f[pairs[k].first];
          const T* b = f[pairs[k].second];
          if (per_row <= kLanes) {  // one element per lane: the lanes are the products, added in order
            alignas(64) double prod[kChunk];
            for (int64_t t = 0; t < nr * per_row; ++t) prod[t] = static_cast<double>(a[t]) * static_cast<double>(b[t]);
            with_short_row(per_row, [&](auto R) {
              for (int64_t q = 0; q < nr; ++q) {
                double total = 0.0;
                for (int64_t t = 0; t < R(); ++t) total += prod[q * R() + t];
                sums[r + q][k] = total;
              }
            });
            continue;
          }
          for (int64_t q = 0; q < nr; ++q) {  // the general path's lane order, row by row
            const T* ar = a + q * per_row;
            const T* br = b + q * per_row;
            double lanes[kLanes];
            for (int l = 0; l < kLanes; ++l) lanes[l] = static_cast<double>(ar[l]) * static_cast<double>(br[l]);
            for (int64_t t = kLanes; t < per_row; ++t) {
              lanes[t % kLanes] += static_cast<double>(ar[t]) * static_cast<double>(br[t]);
            }
            double total = 0.0;
            for (int l = 0; l < kLanes; ++l) total += lanes[l];
            sums[r + q][k] = total;
          }
        }
      }
    });
    return sums;
  }
  const int64_t blocks_per_row = (per_row + kReduceBlock - 1) / kReduceBlock;
  std::vector<std::array<double, NSUM>> partial(rows * blocks_per_row);
  const int64_t grain = std::max<int64_t>(1, kReduceGrain / std::min(per_row, kReduceBlock));
  at::parallel_for(0, rows * blocks_per_row, grain, [&](int64_t b0, int64_t b1) {
    alignas(64) T f[NF][kChunk];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t row = b / blocks_per_row, k = b % blocks_per_row;
      const int64_t begin = row * per_row + k * kReduceBlock;
      const int64_t end = std::min(row * per_row + per_row, begin + kReduceBlock);
      alignas(64) double lanes[NSUM][kLanes] = {};
      for (int64_t c0 = begin; c0 < end; c0 += kChunk) {
        const int64_t n = std::min(kChunk, end - c0);
        stage(c0, n, f);
        int64_t padded = 0;
        for (int j = 0; j < NF; ++j) padded = zero_pad(f[j], n);
        for (int s = 0; s < NSUM; ++s) accumulate_dot(f[pairs[s].first], f[pairs[s].second], lanes[s], padded);
      }
      for (int s = 0; s < NSUM; ++s) {
        double total = 0.0;
        for (int l = 0; l < kLanes; ++l) total += lanes[s][l];
        partial[b][s] = total;
      }
    }
  });
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = 0; k < blocks_per_row; ++k) {
      for (int s = 0; s < NSUM; ++s) sums[r][s] += partial[r * blocks_per_row + k][s];
    }
  }
  return sums;
}

}  // namespace fastscore
