// The public stream API (cpu_stream_simd.h): range logic and the run-time kernel choice.
//
// The kernel set is chosen once, on first use, from cpu_simd_level() (cpu_features.h: the
// CPU's features, optionally lowered by FASTSCORE_CPU_KERNEL). Before a SIMD set is
// accepted it must reproduce the scalar definition on a few hundred counters (including a
// partial vector block); a build that broke bit-exactness (say, without -ffp-contract=off
// somewhere) falls back instead of producing a different stream. That self-test costs a
// few microseconds, once.
#include <cstdint>
#include <cstring>

#include "cpu_features.h"
#include "cpu_stream_simd.h"
#include "stream_kernels.h"

namespace fastscore {
namespace stream_detail {
namespace {

// Room before the low counter word wraps: counters c .. c + room - 1 share c_hi.
inline uint64_t room(uint64_t c) { return (uint64_t{1} << 32) - (c & 0xFFFFFFFFu); }

// nv values from counter c on (the counter modulo 2^64), split so that no kernel call
// sees c_lo wrap. Every piece but the last is whole counters.
template <typename T, typename Kernel>
void counter_values(Kernel kernel, uint32_t k0, uint32_t k1, uint64_t c, uint64_t nv, T* out) {
  while (nv > 0) {
    const uint64_t r = room(c);
    const uint64_t m = nv < 4 * r ? nv : 4 * r;
    kernel(k0, k1, c, static_cast<int64_t>(m), out);
    out += m;
    c += r;  // only used again when m == 4 * r
    nv -= m;
  }
}

// Elements [j, j + left) with no wrap of the element index (j + left <= 2^64). A
// misaligned head comes from one kernel call for up to kHeadCounters counters into a
// stack buffer (a vector block costs about what one scalar counter does); the rest
// starts on a counter boundary and goes straight to out.
template <typename Kernel>
void elements_nowrap(Kernel kernel, uint32_t k0, uint32_t k1, uint64_t j, uint64_t left, float* out) {
  if (j & 3) {
    const uint64_t c = j >> 2, first = j & 3;
    uint64_t m = (first + left + 3) >> 2;  // counters touched
    if (m > uint64_t{kHeadCounters}) m = kHeadCounters;
    if (m > room(c)) m = room(c);
    float buf[4 * kHeadCounters];
    kernel(k0, k1, c, static_cast<int64_t>(4 * m), buf);
    const uint64_t take = left < 4 * m - first ? left : 4 * m - first;
    std::memcpy(out, buf + first, sizeof(float) * take);
    out += take;
    j += take;
    left -= take;
  }
  if (left > 0) counter_values(kernel, k0, k1, j >> 2, left, out);
}

// Elements [j0, j0 + n), the index taken modulo 2^64 (so the counter j >> 2 wraps from
// 2^62 - 1 to 0): split at the wrap, if the range has one.
template <typename Kernel>
void elements(Kernel kernel, uint32_t k0, uint32_t k1, uint64_t j0, int64_t n, float* out) {
  if (n <= 0) return;
  const uint64_t total = static_cast<uint64_t>(n);
  const uint64_t before_wrap = j0 == 0 ? total : 0 - j0;  // elements until j reaches 2^64
  const uint64_t first = total < before_wrap ? total : before_wrap;
  elements_nowrap(kernel, k0, k1, j0, first, out);
  if (first < total) elements_nowrap(kernel, k0, k1, 0, total - first, out + first);
}

}  // namespace

void normals_with(const Kernels& ks, uint32_t k0, uint32_t k1, uint64_t j0, int64_t n, float* out) {
  elements(ks.normals, k0, k1, j0, n, out);
}

void words_with(const Kernels& ks, uint32_t k0, uint32_t k1, uint64_t c0, int64_t n, int32_t* out) {
  // n counters from c0, the counter modulo 2^64 (4 n values; n < 2^61).
  if (n > 0) counter_values(ks.words, k0, k1, c0, 4 * static_cast<uint64_t>(n), out);
}

void signs_with(const Kernels& ks, uint32_t k0, uint32_t k1, uint64_t j0, int64_t n, float* out) {
  elements(ks.signs, k0, k1, j0, n, out);
}

namespace {

// Does `ks` reproduce the scalar definition? A few ranges that exercise the paired
// blocks, a single block, the buffered partial block and the scalar tail, and a c_lo wrap.
bool agrees_with_scalar(const Kernels& ks) {
  const Kernels ref = scalar_kernels();
  constexpr int64_t kN = 4 * 77 + 3;
  static const struct { uint32_t k0, k1; uint64_t j0; } cases[] = {
      {0x2545F491u, 0x9E3779B9u, 0},
      {0xCAFEF00Du, 0xDEADBEEFu, (uint64_t{0xFFFFFFFFu} << 2) - 4 * 37 + 1},
      {1u, 0u, 0x123456789ABCDE00ull + 2},
  };
  for (const auto& c : cases) {
    float a[kN], b[kN];
    int32_t wa[4 * 40], wb[4 * 40];
    normals_with(ks, c.k0, c.k1, c.j0, kN, a);
    normals_with(ref, c.k0, c.k1, c.j0, kN, b);
    if (std::memcmp(a, b, sizeof a) != 0) return false;
    signs_with(ks, c.k0, c.k1, c.j0, kN, a);
    signs_with(ref, c.k0, c.k1, c.j0, kN, b);
    if (std::memcmp(a, b, sizeof a) != 0) return false;
    words_with(ks, c.k0, c.k1, c.j0 >> 2, 40, wa);
    words_with(ref, c.k0, c.k1, c.j0 >> 2, 40, wb);
    if (std::memcmp(wa, wb, sizeof wa) != 0) return false;
  }
  return true;
}

Kernels choose() {
  const int level = cpu_simd_level();
  if (level >= 2) {
    const Kernels ks = avx512_kernels();
    if (agrees_with_scalar(ks)) return ks;
  }
  if (level >= 1) {
    const Kernels ks = avx2_kernels();
    if (agrees_with_scalar(ks)) return ks;
  }
  return scalar_kernels();
}

const Kernels& active() {
  static const Kernels ks = choose();  // thread-safe one-time initialisation
  return ks;
}

}  // namespace
}  // namespace stream_detail

void stream_normals(uint32_t k0, uint32_t k1, uint64_t j0, int64_t n, float* out) {
  stream_detail::normals_with(stream_detail::active(), k0, k1, j0, n, out);
}

void stream_words(uint32_t k0, uint32_t k1, uint64_t c0, int64_t n, int32_t* out) {
  stream_detail::words_with(stream_detail::active(), k0, k1, c0, n, out);
}

void stream_signs(uint32_t k0, uint32_t k1, uint64_t j0, int64_t n, float* out) {
  stream_detail::signs_with(stream_detail::active(), k0, k1, j0, n, out);
}

const char* stream_kernel_name() { return stream_detail::active().name; }

}  // namespace fastscore
