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
#include <initializer_list>

#include "cpu_features.h"
#include "cpu_stream_simd.h"
#include "stream_kernels.h"

namespace fastscore {
namespace stream_detail {
namespace {

// Room before the low counter word wraps: counters c .. c + room - 1 share c_hi.
inline uint64_t room(uint64_t c) { return (uint64_t{1} << 32) - (c & 0xFFFFFFFFu); }

// nv values from counter c on (the counter modulo 2^64), split so that no kernel call
// sees c_lo wrap: whole(c, m, t) for m values from counter c, which are values t .. t + m
// of the request. Every piece but the last is whole counters.
template <typename Whole>
void counter_values(uint64_t c, uint64_t nv, uint64_t t, Whole&& whole) {
  while (nv > 0) {
    const uint64_t r = room(c);
    const uint64_t m = nv < 4 * r ? nv : 4 * r;
    whole(c, m, t);
    t += m;
    c += r;  // only used again when m == 4 * r
    nv -= m;
  }
}

// Elements [j, j + left) with no wrap of the element index (j + left <= 2^64), values
// t.. of the request. A misaligned head comes from one call of `head` (a kernel writing
// values) for up to kHeadCounters counters into a stack buffer (a vector block costs
// about what one scalar counter does), handed to from_buffer(values, m, t); the rest
// starts on a counter boundary and goes to whole (counter_values).
template <typename Head, typename Whole, typename FromBuffer>
void elements_nowrap(Head head, uint32_t k0, uint32_t k1, uint64_t j, uint64_t left, uint64_t t, Whole& whole,
                     FromBuffer& from_buffer) {
  if (j & 3) {
    const uint64_t c = j >> 2, first = j & 3;
    uint64_t m = (first + left + 3) >> 2;  // counters touched
    if (m > uint64_t{kHeadCounters}) m = kHeadCounters;
    if (m > room(c)) m = room(c);
    float buf[4 * kHeadCounters];
    head(k0, k1, c, static_cast<int64_t>(4 * m), buf);
    const uint64_t take = left < 4 * m - first ? left : 4 * m - first;
    from_buffer(buf + first, take, t);
    t += take;
    j += take;
    left -= take;
  }
  if (left > 0) counter_values(j >> 2, left, t, whole);
}

// Elements [j0, j0 + n), the index taken modulo 2^64 (so the counter j >> 2 wraps from
// 2^62 - 1 to 0): split at the wrap, if the range has one.
template <typename Head, typename Whole, typename FromBuffer>
void elements(Head head, uint32_t k0, uint32_t k1, uint64_t j0, int64_t n, Whole&& whole, FromBuffer&& from_buffer) {
  if (n <= 0) return;
  const uint64_t total = static_cast<uint64_t>(n);
  const uint64_t before_wrap = j0 == 0 ? total : 0 - j0;  // elements until j reaches 2^64
  const uint64_t first = total < before_wrap ? total : before_wrap;
  elements_nowrap(head, k0, k1, j0, first, 0, whole, from_buffer);
  if (first < total) elements_nowrap(head, k0, k1, 0, total - first, first, whole, from_buffer);
}

// Values of a writing kernel (normals, signs) straight into out.
template <typename Kernel>
void values_into(Kernel kernel, uint32_t k0, uint32_t k1, uint64_t j0, int64_t n, float* out) {
  elements(
      kernel, k0, k1, j0, n, [&](uint64_t c, uint64_t m, uint64_t t) { kernel(k0, k1, c, static_cast<int64_t>(m), out + t); },
      [&](const float* v, uint64_t m, uint64_t t) { std::memcpy(out + t, v, sizeof(float) * m); });
}

}  // namespace

void normals_with(const Kernels& ks, uint32_t k0, uint32_t k1, uint64_t j0, int64_t n, float* out) {
  values_into(ks.normals, k0, k1, j0, n, out);
}

void words_with(const Kernels& ks, uint32_t k0, uint32_t k1, uint64_t c0, int64_t n, int32_t* out) {
  // n counters from c0, the counter modulo 2^64 (4 n values; n < 2^61).
  if (n <= 0) return;
  counter_values(c0, 4 * static_cast<uint64_t>(n), 0, [&](uint64_t c, uint64_t m, uint64_t t) {
    ks.words(k0, k1, c, static_cast<int64_t>(m), out + t);
  });
}

void signs_with(const Kernels& ks, uint32_t k0, uint32_t k1, uint64_t j0, int64_t n, float* out) {
  values_into(ks.signs, k0, k1, j0, n, out);
}

void update_with(const Kernels& ks, uint32_t k0, uint32_t k1, uint64_t j0, int64_t n, const StreamUpdate& u) {
  elements(
      ks.normals, k0, k1, j0, n,
      [&](uint64_t c, uint64_t m, uint64_t t) { ks.update(k0, k1, c, static_cast<int64_t>(m), shifted(u, t)); },
      [&](const float* z, uint64_t m, uint64_t t) { update_from(shifted(u, t), z, static_cast<int64_t>(m)); });
}

namespace {

// Does `ks` reproduce the scalar definition? A few ranges that exercise the paired
// blocks, a single block, the buffered partial block and the scalar tail, and a c_lo
// wrap: normals, signs, words and the fused update (with and without y).
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
    float x[kN], y[kN];
    for (int64_t t = 0; t < kN; ++t) {
      x[t] = 1.0f + 0.25f * static_cast<float>(t % 13);
      y[t] = -0.5f * static_cast<float>(t % 7);
    }
    const float* const ys[2] = {y, nullptr};
    for (const float* yy : ys) {
      for (const float ca : {0.9f, 1.0f}) {  // 1: the SIMD kernels skip that product
        update_with(ks, c.k0, c.k1, c.j0, kN, {a, x, yy, ca, 0.3f, 0.7f});
        update_with(ref, c.k0, c.k1, c.j0, kN, {b, x, yy, ca, 0.3f, 0.7f});
        if (std::memcmp(a, b, sizeof a) != 0) return false;
      }
    }
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

void stream_update(uint32_t k0, uint32_t k1, uint64_t j0, int64_t n, const StreamUpdate& u) {
  stream_detail::update_with(stream_detail::active(), k0, k1, j0, n, u);
}

const char* stream_kernel_name() { return stream_detail::active().name; }

}  // namespace fastscore
