// Host-side preparation shared by the CPU (csrc/*.cpp) and CUDA (csrc/cuda/*.cu) ops:
// the seed and offset, the coefficient slots, the plan of the fused update, row geometry
// and the corrector's step-size rule. Arguments were checked (and named) by
// fastscore/ops.py; the checks here are only what memory safety needs.
//
// The plain signatures are the SCHEMAS of fastscore/ops.py (fastscore/reference.py
// documents their meaning): a seed is (seed_t, seed), an optional one-element int64 tensor
// read from memory or else the int's 64 bits; an offset (in rows) likewise; a coefficient
// slot i is coef_t[i] (a 0-d or per-sample [rows] float tensor) or else coef[i].
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "philox.h"

namespace fastscore {

// (rows, elements per row); a 0-d tensor is one row of one element.
inline std::pair<int64_t, int64_t> row_geometry(const at::Tensor& t) {
  const int64_t rows = t.dim() == 0 ? 1 : t.size(0);
  return {rows, rows == 0 ? 0 : t.numel() / rows};
}

// ------------------------------------------------------------------ seed and offset

// An int64 that a kernel reads: from `ptr` (a device tensor, loaded inside the kernel)
// or `value` (an int argument, or a CPU tensor read here: host memory, no sync).
struct KernelInt {
  int64_t value;
  const int64_t* ptr;
  FS_HD int64_t get() const { return ptr != nullptr ? *ptr : value; }
};

inline KernelInt kernel_int(const c10::optional<at::Tensor>& t, int64_t value, const at::Device& device,
                            const char* name) {
  if (!t.has_value()) return {value, nullptr};
  TORCH_CHECK(t->numel() == 1 && t->scalar_type() == at::kLong, "fastscore: ", name,
              " must be a one-element int64 tensor");
  if (t->device().is_cpu()) return {*t->data_ptr<int64_t>(), nullptr};
  TORCH_CHECK(t->device() == device, "fastscore: ", name, " must be on the CPU or on the data's device");
  return {0, t->data_ptr<int64_t>()};
}

// The stream position of an op: key = seed's 64 bits (the one place C++ makes the
// seed unsigned), offset in rows.
struct Stream {
  KernelInt seed, offset;
  FS_HD uint32_t k0() const { return static_cast<uint32_t>(static_cast<uint64_t>(seed.get())); }
  FS_HD uint32_t k1() const { return static_cast<uint32_t>(static_cast<uint64_t>(seed.get()) >> 32); }
};

inline Stream make_stream(const c10::optional<at::Tensor>& seed_t, int64_t seed,
                          const c10::optional<at::Tensor>& offset_t, int64_t offset, const at::Device& device) {
  Stream s{kernel_int(seed_t, seed, device, "seed"), kernel_int(offset_t, offset, device, "offset")};
  TORCH_CHECK(s.offset.ptr != nullptr || s.offset.value >= 0, "fastscore: offset must be >= 0");
  return s;
}

// ------------------------------------------------------------------ coefficients

// One coefficient slot: a value, or element `row * stride` of a float tensor (stride 0
// for a 0-d tensor). Read as double, then rounded once to the compute type.
struct Coef {
  enum Kind : int32_t { kValue, kF64, kF32, kF16, kBF16 };
  double value;
  const void* data;
  int64_t stride;
  int32_t kind;

  FS_HD double at_row(int64_t row) const {
    const int64_t i = row * stride;
    switch (kind) {
      case kF64: return static_cast<const double*>(data)[i];
      case kF32: return static_cast<double>(static_cast<const float*>(data)[i]);
      case kF16: return static_cast<double>(static_cast<float>(static_cast<const c10::Half*>(data)[i]));
      case kBF16: return static_cast<double>(static_cast<float>(static_cast<const c10::BFloat16*>(data)[i]));
      default: return value;
    }
  }
  // Rows [r0, r0 + n) as double into out, the kind test outside the loop (short rows: a
  // 2-D batch reads one coefficient per two elements). Host code.
  void rows_to(int64_t r0, int64_t n, double* out) const {
    if (kind == kF64) {
      const double* p = static_cast<const double*>(data) + r0 * stride;
      for (int64_t q = 0; q < n; ++q) out[q] = p[q * stride];
    } else if (kind == kF32) {
      const float* p = static_cast<const float*>(data) + r0 * stride;
      for (int64_t q = 0; q < n; ++q) out[q] = static_cast<double>(p[q * stride]);
    } else if (kind == kValue) {
      for (int64_t q = 0; q < n; ++q) out[q] = value;
    } else {
      for (int64_t q = 0; q < n; ++q) out[q] = at_row(r0 + q);  // half types
    }
  }
  // fn(q0, m, v) for pieces of rows [r0, r0 + n): v[q] = the value of row r0 + q0 + q, q < m
  // (rows_to into a stack buffer, a piece at a time). Host code.
  template <typename Fn>
  void for_row_pieces(int64_t r0, int64_t n, Fn&& fn) const {
    constexpr int64_t kPiece = 256;
    double v[kPiece];
    for (int64_t q0 = 0; q0 < n; q0 += kPiece) {
      const int64_t m = n - q0 < kPiece ? n - q0 : kPiece;
      rows_to(r0 + q0, m, v);
      fn(q0, m, static_cast<const double*>(v));
    }
  }
  bool per_row() const { return data != nullptr && stride != 0; }
  bool is_zero_value() const { return data == nullptr && value == 0.0; }
};

inline Coef value_coef(double v) { return {v, nullptr, 0, Coef::kValue}; }

// A per-row array of doubles the op made itself (the corrector's step sizes).
inline Coef row_coef(const double* rows) { return {0.0, rows, 1, Coef::kF64}; }

inline Coef make_coef(double value, const c10::optional<at::Tensor>& t, const at::Tensor& x, const char* what) {
  if (!t.has_value()) return value_coef(value);
  const int64_t rows = row_geometry(x).first;
  TORCH_CHECK(t->dim() == 0 || (t->dim() == 1 && t->size(0) == rows), "fastscore: ", what,
              " must be a 0-d or a per-sample [rows] tensor");
  TORCH_CHECK(t->device() == x.device(), "fastscore: ", what, " must be on the data's device");
  int32_t kind;
  switch (t->scalar_type()) {
    case at::kDouble: kind = Coef::kF64; break;
    case at::kFloat: kind = Coef::kF32; break;
    case at::kHalf: kind = Coef::kF16; break;
    case at::kBFloat16: kind = Coef::kBF16; break;
    default: TORCH_CHECK(false, "fastscore: ", what, " must be a floating tensor");
  }
  return {0.0, t->data_ptr(), t->dim() == 0 ? 0 : t->stride(0), kind};
}

// ------------------------------------------------------------------ the fused update

// out_o = ((a x + b_1 y_1) + ... + b_K y_K) + c z for the outputs o (reference.update_).
constexpr int kMaxTerms = 4;  // y tensors
constexpr int kMaxSlots = kMaxTerms + 2;

struct UpdateCoefs {
  int n_terms = 0;  // K
  int n_out = 1;
  Coef slot[2][kMaxSlots];
  bool noise_term[2] = {false, false};
  bool per_row = false;  // some slot varies by row
  bool draws() const { return noise_term[0] || (n_out == 2 && noise_term[1]); }
};

// Slot i holds coef[i], or coef_t[j] where coef_slot[j] == i.
inline UpdateCoefs make_update_coefs(int n_terms, int n_out, c10::ArrayRef<double> coef, at::TensorList coef_t,
                                     c10::ArrayRef<int64_t> coef_slot, const at::Tensor& x) {
  TORCH_CHECK(n_terms <= kMaxTerms, "fastscore: at most ", kMaxTerms, " tensors are combined, got ", n_terms);
  const int n = n_terms + 2;
  TORCH_CHECK(static_cast<int64_t>(coef.size()) == n * n_out && coef_t.size() == coef_slot.size(),
              "fastscore: coef must have ", n * n_out, " slots and one slot per coefficient tensor");
  UpdateCoefs u;
  u.n_terms = n_terms;
  u.n_out = n_out;
  for (int o = 0; o < n_out; ++o) {
    for (int i = 0; i < n; ++i) u.slot[o][i] = value_coef(coef[o * n + i]);
  }
  for (size_t j = 0; j < coef_t.size(); ++j) {
    const int64_t i = coef_slot[j];
    TORCH_CHECK(i >= 0 && i < n * n_out, "fastscore: coef_slot out of range");
    u.slot[i / n][i % n] = make_coef(0.0, coef_t[j], x, "coef");
  }
  for (int o = 0; o < n_out; ++o) {
    for (int i = 0; i < n; ++i) u.per_row = u.per_row || u.slot[o][i].per_row();
    u.noise_term[o] = !u.slot[o][n - 1].is_zero_value();  // c == 0.0: no noise term
  }
  return u;
}

// The tensors of the fused update, contiguous: out (x itself when updating in place),
// out2, x, ys and an explicit noise (in the compute dtype). Outputs that are not
// contiguous are computed into temporaries and copied back by finish().
struct UpdateTensors {
  at::Tensor out, out2, x, noise;
  std::vector<at::Tensor> ys;
  at::Tensor out_target, out2_target;  // the caller's tensors

  void finish() {
    if (!out.is_same(out_target)) out_target.copy_(out);
    if (out2.defined() && !out2.is_same(out2_target)) out2_target.copy_(out2);
  }
};

inline at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline UpdateTensors make_update_tensors(const at::Tensor& out, const c10::optional<at::Tensor>& out2,
                                         const at::Tensor& x, at::TensorList ys, const c10::optional<at::Tensor>& noise) {
  auto like = [&](const at::Tensor& t, at::ScalarType dtype, const char* name) {
    TORCH_CHECK(t.sizes() == x.sizes() && t.scalar_type() == dtype && t.device() == x.device(), "fastscore: ", name,
                " must match x in shape and device and have dtype ", dtype);
  };
  UpdateTensors u;
  like(out, x.scalar_type(), "out");
  u.out_target = out;
  u.out = out.is_contiguous() ? out : at::empty_like(out, at::MemoryFormat::Contiguous);
  // In place (out is x): the kernel reads x from the buffer it writes, element by element.
  u.x = out.is_same(x) ? u.out : x.contiguous();
  if (out.is_same(x) && !out.is_contiguous()) u.out.copy_(x);
  if (out2.has_value()) {
    like(*out2, x.scalar_type(), "out2");
    u.out2_target = *out2;
    u.out2 = out2->is_contiguous() ? *out2 : at::empty_like(*out2, at::MemoryFormat::Contiguous);
  }
  for (const at::Tensor& y : ys) {
    like(y, x.scalar_type(), "ys");
    u.ys.push_back(y.contiguous());
  }
  if (noise.has_value()) {
    like(*noise, compute_type(x.scalar_type()), "noise");
    u.noise = noise->contiguous();
  }
  return u;
}

// The three entry points of the update family (step_, update_, lincomb), written once for
// every device: Run(UpdateTensors&, const UpdateCoefs&, const Stream&) is the device's kernel.
template <void (*Run)(UpdateTensors&, const UpdateCoefs&, const Stream&)>
struct UpdateOps {
  static void run(const at::Tensor& out, const c10::optional<at::Tensor>& out2, const at::Tensor& x,
                  at::TensorList ys, c10::ArrayRef<double> coef, at::TensorList coef_t, c10::ArrayRef<int64_t> coef_slot,
                  const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& seed_t, int64_t seed,
                  const c10::optional<at::Tensor>& offset_t, int64_t offset) {
    const Stream s = make_stream(seed_t, seed, offset_t, offset, x.device());
    const UpdateCoefs u =
        make_update_coefs(static_cast<int>(ys.size()), out2.has_value() ? 2 : 1, coef, coef_t, coef_slot, x);
    UpdateTensors t = make_update_tensors(out, out2, x, ys, noise);
    Run(t, u, s);
  }
  // In place: x <- combination 0, out2 <- combination 1.
  static void step_(at::Tensor x, const c10::optional<at::Tensor>& out2, at::TensorList ys, c10::ArrayRef<double> coef,
                    at::TensorList coef_t, c10::ArrayRef<int64_t> coef_slot, const c10::optional<at::Tensor>& noise,
                    const c10::optional<at::Tensor>& seed_t, int64_t seed, const c10::optional<at::Tensor>& offset_t,
                    int64_t offset) {
    run(x, out2, x, ys, coef, coef_t, coef_slot, noise, seed_t, seed, offset_t, offset);
  }
  // Into out (not x).
  static void update_(at::Tensor out, const c10::optional<at::Tensor>& out2, const at::Tensor& x, at::TensorList ys,
                      c10::ArrayRef<double> coef, at::TensorList coef_t, c10::ArrayRef<int64_t> coef_slot,
                      const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& seed_t, int64_t seed,
                      const c10::optional<at::Tensor>& offset_t, int64_t offset) {
    TORCH_CHECK(!out.is_same(x), "fastscore: update_ writes another tensor than x (use step_)");
    run(out, out2, x, ys, coef, coef_t, coef_slot, noise, seed_t, seed, offset_t, offset);
  }
  // A new contiguous tensor.
  static at::Tensor lincomb(const at::Tensor& x, at::TensorList ys, c10::ArrayRef<double> coef, at::TensorList coef_t,
                            c10::ArrayRef<int64_t> coef_slot, const c10::optional<at::Tensor>& noise,
                            const c10::optional<at::Tensor>& seed_t, int64_t seed,
                            const c10::optional<at::Tensor>& offset_t, int64_t offset) {
    at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
    run(out, c10::nullopt, x, ys, coef, coef_t, coef_slot, noise, seed_t, seed, offset_t, offset);
    return out;
  }
};

// ------------------------------------------------------------------ the Langevin corrector rule

// score_sde's step size from the (batch-mean or per-row) norms g = |score|, n = |z|:
// eps = (snr * n / g)^2 * 2 * alpha, 0 when g == 0; reference.corrector_step_size's order.
FS_HD double corrector_eps(double g, double n, double snr, double alpha) {
  const double ratio = g > 0.0 ? fs_div(fs_mul(snr, n), g) : 0.0;
  return fs_mul(fs_mul(fs_mul(ratio, ratio), 2.0), alpha);
}

// Pass 2 of the corrector: x <- 1 x + eps_r score + sqrt(2 eps_r) z, and x_mean <- 1 x + eps_r
// score, from per-row arrays step[0, r] = eps_r, step[1, r] = sqrt(2 eps_r) (host or device).
inline UpdateCoefs corrector_update_coefs(const double* step, int64_t rows, bool with_mean) {
  UpdateCoefs u;
  u.n_terms = 1;
  u.n_out = with_mean ? 2 : 1;
  u.per_row = true;
  for (int o = 0; o < u.n_out; ++o) {
    u.slot[o][0] = value_coef(1.0);
    u.slot[o][1] = row_coef(step);
    u.slot[o][2] = o == 0 ? row_coef(step + rows) : value_coef(0.0);
    u.noise_term[o] = o == 0;
  }
  return u;
}

// ------------------------------------------------------------------ sliced score matching

// score [B, D...] with jv and probes v [B, P, D...].
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

// ------------------------------------------------------------------ compile-time dispatch

// fn(std::integral_constant<bool, b>{}) for a run-time bool b: keeps branches out of loops.
template <typename Fn>
inline void with_bool(bool b, Fn&& fn) {
  if (b) {
    fn(std::true_type{});
  } else {
    fn(std::false_type{});
  }
}

// fn(std::integral_constant<int, k>{}) for k in [0, kMaxTerms].
template <typename Fn>
inline void with_terms(int k, Fn&& fn) {
  switch (k) {
    case 0: fn(std::integral_constant<int, 0>{}); break;
    case 1: fn(std::integral_constant<int, 1>{}); break;
    case 2: fn(std::integral_constant<int, 2>{}); break;
    case 3: fn(std::integral_constant<int, 3>{}); break;
    case 4: fn(std::integral_constant<int, 4>{}); break;
    default: TORCH_CHECK(false, "fastscore: at most ", kMaxTerms, " tensors are combined");
  }
}

}  // namespace fastscore
