// Portable kernels of the noise stream: philox.h itself, one counter at a time.
//
// This is the fallback for CPUs without AVX2 and the reference the SIMD kernels are
// tested against. The normals kernel keeps the old normals_tile structure (one
// structure-of-arrays pass per 64-counter tile, then an interleave) so that GCC can still
// auto-vectorise it at the baseline ISA (SSE2); every operation is IEEE-rounded and
// -ffp-contract=off forbids fma, so the bits are those of philox.h whatever GCC does.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "philox.h"
#include "stream_kernels.h"

namespace fastscore {
namespace stream_detail {
namespace {

constexpr int64_t kTile = 64;  // counters per SoA tile (1 KiB of normals)

// The last counter of a range may be partial: make it whole in a buffer, copy a part.
template <typename T, typename Whole>
void values(uint64_t c0, int64_t nv, T* out, Whole whole) {
  const int64_t nc = nv >> 2;
  if (nc > 0) whole(c0, nc, out);
  const int64_t rest = nv & 3;
  if (rest) {
    T v[4];
    whole(c0 + static_cast<uint64_t>(nc), 1, v);
    std::memcpy(out + 4 * nc, v, sizeof(T) * static_cast<size_t>(rest));
  }
}

void normals_whole(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nc, float* out) {
  const uint32_t hi = static_cast<uint32_t>(c0 >> 32);
  uint32_t lo = static_cast<uint32_t>(c0);  // no wrap inside the range (kernel contract)
  alignas(64) float n0[kTile], n1[kTile], n2[kTile], n3[kTile];
  while (nc > 0) {
    const int m = static_cast<int>(std::min<int64_t>(nc, kTile));
    for (int i = 0; i < m; ++i) {
      float n[4];
      normals4(lo + static_cast<uint32_t>(i), hi, k0, k1, n);
      n0[i] = n[0];
      n1[i] = n[1];
      n2[i] = n[2];
      n3[i] = n[3];
    }
    for (int i = 0; i < m; ++i) {
      out[4 * i] = n0[i];
      out[4 * i + 1] = n1[i];
      out[4 * i + 2] = n2[i];
      out[4 * i + 3] = n3[i];
    }
    out += 4 * m;
    lo += static_cast<uint32_t>(m);
    nc -= m;
  }
}

void words_whole(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nc, int32_t* out) {
  const uint32_t hi = static_cast<uint32_t>(c0 >> 32);
  const uint32_t lo = static_cast<uint32_t>(c0);
  for (int64_t i = 0; i < nc; ++i) {
    const PhiloxWords w = philox4x32_10(lo + static_cast<uint32_t>(i), hi, k0, k1);
    out[4 * i] = static_cast<int32_t>(w.w0);
    out[4 * i + 1] = static_cast<int32_t>(w.w1);
    out[4 * i + 2] = static_cast<int32_t>(w.w2);
    out[4 * i + 3] = static_cast<int32_t>(w.w3);
  }
}

inline float sign_of(uint32_t w) { return (w >> 31) ? -1.0f : 1.0f; }

void signs_whole(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nc, float* out) {
  const uint32_t hi = static_cast<uint32_t>(c0 >> 32);
  const uint32_t lo = static_cast<uint32_t>(c0);
  for (int64_t i = 0; i < nc; ++i) {
    const PhiloxWords w = philox4x32_10(lo + static_cast<uint32_t>(i), hi, k0, k1);
    out[4 * i] = sign_of(w.w0);
    out[4 * i + 1] = sign_of(w.w1);
    out[4 * i + 2] = sign_of(w.w2);
    out[4 * i + 3] = sign_of(w.w3);
  }
}

void normals_scalar(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, float* out) {
  values(c0, nv, out, [&](uint64_t c, int64_t nc, float* o) { normals_whole(k0, k1, c, nc, o); });
}
void words_scalar(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, int32_t* out) {
  values(c0, nv, out, [&](uint64_t c, int64_t nc, int32_t* o) { words_whole(k0, k1, c, nc, o); });
}
void signs_scalar(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, float* out) {
  values(c0, nv, out, [&](uint64_t c, int64_t nc, float* o) { signs_whole(k0, k1, c, nc, o); });
}

// The update through a buffer of one tile's normals (this path has no registers to
// keep them in).
void update_scalar(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, const StreamUpdate& u) {
  float z[4 * kTile];
  for (int64_t t = 0; t < nv; t += 4 * kTile) {
    const int64_t m = std::min<int64_t>(nv - t, 4 * kTile);
    normals_scalar(k0, k1, c0 + static_cast<uint64_t>(t >> 2), m, z);
    update_from(shifted(u, t), z, m);
  }
}

void box_muller_scalar(const int32_t* words, int64_t nc, float* out) {
  for (int64_t i = 0; i < nc; ++i) {
    const uint32_t* w = reinterpret_cast<const uint32_t*>(words + 4 * i);
    box_muller_f32(uniform_f32(w[0]), uniform_f32(w[1]), &out[4 * i], &out[4 * i + 1]);
    box_muller_f32(uniform_f32(w[2]), uniform_f32(w[3]), &out[4 * i + 2], &out[4 * i + 3]);
  }
}

}  // namespace

Kernels scalar_kernels() { return {"scalar", normals_scalar, words_scalar, signs_scalar, update_scalar, box_muller_scalar}; }

}  // namespace stream_detail
}  // namespace fastscore
