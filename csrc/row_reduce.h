// Deterministic per-row float64 reductions for the CPU ops (corrector norms, DSM loss,
// sliced score matching). Each row is cut into fixed blocks; a block is visited in
// chunks of kChunk elements that the caller stages (fp32, or fp64 for fp64 storage) and
// folds into kLanes fixed float64 lanes; lanes, then blocks, are added in a fixed order.
// So a sum's bits depend on the data only — not on the thread count or the schedule.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

namespace fastscore {

constexpr int64_t kReduceBlock = 16384;  // elements per partial sum
constexpr int64_t kChunk = 256;          // elements staged per lane pass
constexpr int kLanes = 16;
constexpr int64_t kReduceGrain = 8192;  // elements per parallel task

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

// sums[r][k] for rows r: chunk(c0, n, lanes) stages flat elements [c0, c0 + n) of the
// row and accumulates sum k into lanes[k].
template <int NSUM, typename ChunkFn>
std::vector<std::array<double, NSUM>> row_block_sums(int64_t rows, int64_t per_row, ChunkFn&& chunk) {
  const int64_t blocks_per_row = std::max<int64_t>(1, (per_row + kReduceBlock - 1) / kReduceBlock);
  std::vector<std::array<double, NSUM>> partial(rows * blocks_per_row);
  // Grain in blocks worth ~kReduceGrain elements: short rows are not worth a thread each.
  const int64_t grain = std::max<int64_t>(1, kReduceGrain / std::min(std::max<int64_t>(per_row, 1), kReduceBlock));
  at::parallel_for(0, rows * blocks_per_row, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t row = b / blocks_per_row, k = b % blocks_per_row;
      const int64_t begin = row * per_row + k * kReduceBlock;
      const int64_t end = std::min(row * per_row + per_row, begin + kReduceBlock);
      alignas(64) double lanes[NSUM][kLanes] = {};
      for (int64_t c0 = begin; c0 < end; c0 += kChunk) chunk(c0, std::min(kChunk, end - c0), lanes);
      for (int s = 0; s < NSUM; ++s) {
        double total = 0.0;
        for (int l = 0; l < kLanes; ++l) total += lanes[s][l];
        partial[b][s] = total;
      }
    }
  });
  std::vector<std::array<double, NSUM>> sums(rows);
  for (int64_t r = 0; r < rows; ++r) {
    sums[r].fill(0.0);
    for (int64_t k = 0; k < blocks_per_row; ++k) {
      for (int s = 0; s < NSUM; ++s) sums[r][s] += partial[r * blocks_per_row + k][s];
    }
  }
  return sums;
}

}  // namespace fastscore
