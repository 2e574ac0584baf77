// Host-side plumbing shared by the CPU and CUDA ops: the seed tensor, row geometry,
// the coefficient tensor, and running a kernel on contiguous outputs.
#pragma once
#include <ATen/ATen.h>
#include <cstdint>
#include <utility>

namespace fastscore {

// fastscore's seed tensor: CPU int64 [2] = (seed mod 2**64 as two's complement, offset
// in rows), split into the Philox key words.
struct SeedOffset {
  uint32_t k0, k1;
  int64_t offset;
};

inline SeedOffset seed_offset(int64_t seed, int64_t offset) {
  TORCH_CHECK(offset >= 0, "fastscore: offset must be >= 0, got ", offset);
  const uint64_t s = static_cast<uint64_t>(seed);
  return {static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32), offset};
}

inline SeedOffset read_seed(const at::Tensor& seed) {
  TORCH_CHECK(seed.device().is_cpu() && seed.scalar_type() == at::kLong && seed.numel() == 2,
              "fastscore: seed must be a CPU int64 tensor [seed, offset]");
  const at::Tensor s = seed.contiguous();
  return seed_offset(s.data_ptr<int64_t>()[0], s.data_ptr<int64_t>()[1]);
}

// (rows, elements per row); a 0-d tensor is one row of one element.
inline std::pair<int64_t, int64_t> row_geometry(const at::Tensor& t) {
  const int64_t rows = t.dim() == 0 ? 1 : t.size(0);
  return {rows, rows == 0 ? 0 : t.numel() / rows};
}

// coef: float64 [3, 1] or [3, rows] (rows a, b, c), made contiguous on `device`.
inline at::Tensor checked_coef(const at::Tensor& coef, const at::Tensor& x) {
  TORCH_CHECK(coef.scalar_type() == at::kDouble && coef.dim() == 2 && coef.size(0) == 3 &&
                  (coef.size(1) == 1 || coef.size(1) == row_geometry(x).first),
              "fastscore: coef must be float64 [3, 1] or [3, rows]");
  return coef.to(x.device()).contiguous();
}

// coef of the DSM ops: float64 [2, 1] or [2, rows] (rows 1/sigma, weight), on score's device.
inline at::Tensor checked_dsm_coef(const at::Tensor& coef, const at::Tensor& score) {
  TORCH_CHECK(coef.scalar_type() == at::kDouble && coef.dim() == 2 && coef.size(0) == 2 &&
                  (coef.size(1) == 1 || coef.size(1) == row_geometry(score).first),
              "fastscore: dsm coef must be float64 [2, 1] or [2, rows]");
  return coef.to(score.device()).contiguous();
}

// score [B, D...] with jv and probes v [B, P, D...] of the sliced score matching ops.
struct SlicedGeometry {
  int64_t B, P, D;
};

inline SlicedGeometry check_sliced(const at::Tensor& score, const at::Tensor& jv, const at::Tensor& v) {
  TORCH_CHECK(score.dim() >= 1 && jv.dim() == score.dim() + 1, "fastscore: jv must be [B, P, ...] for score [B, ...]");
  TORCH_CHECK(jv.sizes() == v.sizes(), "fastscore: v must match jv");
  TORCH_CHECK(jv.size(0) == score.size(0) && jv.sizes().slice(2) == score.sizes().slice(1),
              "fastscore: jv must be [B, P, ...] for score [B, ...]");
  TORCH_CHECK(jv.scalar_type() == score.scalar_type() && v.scalar_type() == score.scalar_type(),
              "fastscore: score, jv and v must share a dtype");
  TORCH_CHECK(jv.device() == score.device() && v.device() == score.device(),
              "fastscore: score, jv and v must be on one device");
  const int64_t B = score.size(0), P = jv.size(1);
  return {B, P, B == 0 ? 0 : score.numel() / B};
}

inline void check_like(const at::Tensor& t, const at::Tensor& x, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.sizes() == x.sizes() && t.scalar_type() == dtype && t.device() == x.device(), "fastscore: ", name,
              " must match x in shape and device and have dtype ", dtype);
}

inline void check_like(const c10::optional<at::Tensor>& t, const at::Tensor& x, at::ScalarType dtype,
                       const char* name) {
  TORCH_CHECK(!t.has_value() || (t->sizes() == x.sizes() && t->scalar_type() == dtype &&
                                  t->device() == x.device()),
              "fastscore: ", name, " must match x in shape and device and have dtype ", dtype);
}

// Runs launch(out, mean) with contiguous outputs (x itself when it is contiguous, so
// the update is in place), then copies back into non-contiguous x / x_mean.
template <typename Launch>
void with_contiguous_outputs(at::Tensor& x, const c10::optional<at::Tensor>& x_mean, Launch&& launch) {
  check_like(x_mean, x, x.scalar_type(), "x_mean");
  at::Tensor out = x.contiguous();
  at::Tensor mean;
  if (x_mean.has_value()) {
    mean = x_mean->is_contiguous() ? *x_mean : at::empty_like(*x_mean, at::MemoryFormat::Contiguous);
  }
  launch(out, mean.defined() ? &mean : nullptr);
  if (!out.is_same(x)) x.copy_(out);
  if (mean.defined() && !mean.is_same(*x_mean)) x_mean->copy_(mean);
}

}  // namespace fastscore
