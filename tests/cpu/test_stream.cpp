// Bitwise tests of the stream kernels against the definition (philox.h, called directly
// element by element - not through any kernel).
//
//   ./test_bits               the standard suite (>= 1e8 normals, 1e8 words and 1e8 signs
//                             per kernel path this CPU can run, + split invariance)
//   ./test_bits --quick       a smaller suite (a few seconds)
//   ./test_bits --exhaustive  additionally: Box-Muller on every 32-bit word value, in both
//                             the log (u1) and the sincos (u2) position, for each SIMD path
//
// Exit status 0 only if every compared value matched bit for bit.
#include <xmmintrin.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>
#include <thread>
#include <vector>

#include "cpu_stream_simd.h"
#include "philox.h"
#include "stream_kernels.h"

using namespace fastscore;
using namespace fastscore::stream_detail;

namespace {

uint64_t g_failures = 0;

// ---- the definition ---------------------------------------------------------------

void ref_normals(uint32_t k0, uint32_t k1, uint64_t j0, int64_t n, float* out) {
  uint64_t c_prev = ~uint64_t{0};
  float v[4] = {0, 0, 0, 0};
  bool have = false;
  for (int64_t t = 0; t < n; ++t) {
    const uint64_t j = j0 + static_cast<uint64_t>(t);  // modulo 2^64
    const uint64_t c = j >> 2;
    if (!have || c != c_prev) {
      normals4(static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), k0, k1, v);
      c_prev = c;
      have = true;
    }
    out[t] = v[j & 3];
  }
}

void ref_signs(uint32_t k0, uint32_t k1, uint64_t j0, int64_t n, float* out) {
  for (int64_t t = 0; t < n; ++t) {
    const uint64_t j = j0 + static_cast<uint64_t>(t);
    const uint64_t c = j >> 2;
    const PhiloxWords w = philox4x32_10(static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), k0, k1);
    const uint32_t ws[4] = {w.w0, w.w1, w.w2, w.w3};
    out[t] = (ws[j & 3] >> 31) ? -1.0f : 1.0f;
  }
}

void ref_words(uint32_t k0, uint32_t k1, uint64_t c0, int64_t n, int32_t* out) {
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t c = c0 + static_cast<uint64_t>(i);
    const PhiloxWords w = philox4x32_10(static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), k0, k1);
    out[4 * i] = static_cast<int32_t>(w.w0);
    out[4 * i + 1] = static_cast<int32_t>(w.w1);
    out[4 * i + 2] = static_cast<int32_t>(w.w2);
    out[4 * i + 3] = static_cast<int32_t>(w.w3);
  }
}

// The fused update (StreamUpdate) from the definition's normals z, written out here
// rather than through update_from: out = ((a x) + b y) + c z, or (a x) + c z.
void ref_update(const float* x, const float* y, float a, float b, float c, const float* z, int64_t n, float* out) {
  for (int64_t t = 0; t < n; ++t) {
    float m = a * x[t];
    if (y != nullptr) m = m + b * y[t];
    out[t] = m + c * z[t];
  }
}

// Update operands with varied exponents and signs (so every product rounds).
void fill_operands(std::vector<float>& x, std::vector<float>& y) {
  uint32_t h = 0x9E3779B9u;
  for (size_t t = 0; t < x.size(); ++t) {
    h = h * 1664525u + 1013904223u;
    x[t] = static_cast<float>(static_cast<int32_t>(h)) * 0x1p-27f;
    y[t] = static_cast<float>(static_cast<int32_t>(h ^ (h >> 13))) * 0x1p-33f;
  }
}
constexpr float kA = 0.99963f, kB = 0.0137f, kC = 0.16553f;

// 1.0f read at run time: as a constant the compiler would fold ref_update's 1 * x to x,
// and the reference could no longer differ from a kernel that skips that product.
volatile float g_unit = 1.0f;
float unit_coefficient() { return g_unit; }

// Runs fn(begin, end) over [0, n) on two threads (the reference is the slow part).
template <typename Fn>
void parallel2(int64_t n, Fn fn) {
  const int64_t mid = (n / 2) & ~int64_t{63};
  std::thread t([&] { fn(mid, n); });
  fn(0, mid);
  t.join();
}

// ---- comparison --------------------------------------------------------------------

template <typename T>
uint64_t count_mismatches(const T* a, const T* b, int64_t n, const char* what, const char* path,
                          uint64_t seed, uint64_t j0) {
  uint64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) {
      if (bad < 5) {
        uint32_t x, y;
        std::memcpy(&x, &a[i], 4);
        std::memcpy(&y, &b[i], 4);
        std::printf("  MISMATCH %s [%s] seed=0x%016" PRIx64 " j0=0x%016" PRIx64 " i=%" PRId64
                    ": got 0x%08x want 0x%08x\n", what, path, seed, j0, i, x, y);
      }
      ++bad;
    }
  }
  return bad;
}

struct Path {
  const char* name;
  Kernels ks;
};

std::vector<Path> runnable_paths() {
  __builtin_cpu_init();
  std::vector<Path> p;
  p.push_back({"scalar", scalar_kernels()});
  if (__builtin_cpu_supports("avx2")) p.push_back({"avx2", avx2_kernels()});
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
    p.push_back({"avx512", avx512_kernels()});
  return p;
}

const uint64_t kSeeds[] = {0, 1, (uint64_t{1} << 32) + 5, (uint64_t{1} << 63) + 7, 0xDEADBEEFCAFEF00Dull,
                           ~uint64_t{0}};
// Counter bases. 2^32 - 3 and 2^32 - 13 put the c_lo wrap inside the first AVX2 / AVX-512
// vector; 0xFFFFFF00 wraps 256 counters in; 0x1FFFFFFF9 carries c_hi 1 -> 2;
// 2^62 - 5 wraps the element index past 2^64 (counter back to 0).
const uint64_t kBases[] = {0, (uint64_t{1} << 32) - 3, (uint64_t{1} << 32) - 13, 0xFFFFFF00ull,
                           0x123456789ABCDE00ull, 0x1FFFFFFF9ull, (uint64_t{1} << 62) - 5};

struct Totals {
  uint64_t normals = 0, words = 0, signs = 0, updates = 0, split = 0;
};

// The update kernels on [0, n) against ref_update of the definition's normals z: with y,
// without, and in place (out = x).
void check_updates(const Path& path, uint32_t k0, uint32_t k1, uint64_t j0, int64_t n, const float* z,
                   const std::vector<float>& x, const std::vector<float>& y, std::vector<float>& want,
                   std::vector<float>& got, Totals& tot, uint64_t seed, const char* what) {
  for (const float a : {kA, unit_coefficient()}) {  // 1: the kernels take x for 1 * x (skips_unit_product)
    for (const float* yy : {y.data(), static_cast<const float*>(nullptr)}) {
      ref_update(x.data(), yy, a, kB, kC, z, n, want.data());
      std::memset(got.data(), 0xFF, sizeof(float) * n);
      update_with(path.ks, k0, k1, j0, n, {got.data(), x.data(), yy, a, kB, kC});
      g_failures += count_mismatches(got.data(), want.data(), n, what, path.name, seed, j0);
      tot.updates += n;
    }
  }
  std::memcpy(got.data(), x.data(), sizeof(float) * n);  // in place: out is x
  update_with(path.ks, k0, k1, j0, n, {got.data(), got.data(), y.data(), kA, kB, kC});
  ref_update(x.data(), y.data(), kA, kB, kC, z, n, want.data());
  g_failures += count_mismatches(got.data(), want.data(), n, what, path.name, seed, j0);
  tot.updates += n;
}

// a == 1 (langevin_step_'s x term), where the SIMD kernels take x for 1 * x: the
// definition's bits for special x (denormals, signed zeros, infinities, NaN) with sums
// small enough that a denormal x shows, under each flush mode of this thread's MXCSR
// (flush-to-zero without denormals-are-zero is the one where 1 * x differs from x).
void unit_a_suite(const std::vector<Path>& paths) {
  constexpr int64_t n = 4 * 129 + 3;
  std::vector<float> x(n), y(n), z(n), want(n), got(n);
  fill_operands(x, y);
  const float special[] = {0x1p-149f, -0x1p-140f, 0x1.fffffcp-127f, 0.0f, -0.0f, INFINITY, -INFINITY, NAN, 0x1p-126f};
  for (int64_t t = 0; t < n; t += 2) x[t] = special[(t / 2) % 9];
  const float one = unit_coefficient();
  const unsigned csr = _mm_getcsr();
  constexpr unsigned kFtz = 0x8000, kDaz = 0x40;
  for (const unsigned mode : {0u, kFtz, kDaz, kFtz | kDaz}) {
    _mm_setcsr((csr & ~(kFtz | kDaz)) | mode);
    ref_normals(11, 12, 4 * 7 + 1, n, z.data());
    for (const float c : {kC, 0x1p-124f}) {
      for (const float* yy : {static_cast<const float*>(y.data()), static_cast<const float*>(nullptr)}) {
        ref_update(x.data(), yy, one, 0x1p-110f, c, z.data(), n, want.data());
        for (const auto& path : paths) {
          std::memset(got.data(), 0xFF, sizeof(float) * n);
          update_with(path.ks, 11, 12, 4 * 7 + 1, n, {got.data(), x.data(), yy, one, 0x1p-110f, c});
          g_failures += count_mismatches(got.data(), want.data(), n, "a = 1, special x", path.name, mode, c < 1e-30f);
        }
      }
    }
  }
  _mm_setcsr(csr);
}

// Normals + signs over every (seed, base), words over every (seed, base).
void stream_suite(const std::vector<Path>& paths, int64_t n_per_case, std::vector<Totals>& tot) {
  std::vector<float> ref(n_per_case), got(n_per_case), x(n_per_case), y(n_per_case), want(n_per_case);
  fill_operands(x, y);
  int ci = 0;
  for (uint64_t seed : kSeeds) {
    const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (uint64_t base : kBases) {
      ++ci;
      // Unaligned start (1..3) on most cases, odd length: heads and tails everywhere.
      const uint64_t j0 = 4 * base + static_cast<uint64_t>(ci % 4);
      const int64_t n = n_per_case - (ci % 7);
      // normals
      parallel2(n, [&](int64_t b, int64_t e) { ref_normals(k0, k1, j0 + b, e - b, ref.data() + b); });
      for (size_t p = 0; p < paths.size(); ++p) {
        std::memset(got.data(), 0xFF, sizeof(float) * n);
        normals_with(paths[p].ks, k0, k1, j0, n, got.data());
        g_failures += count_mismatches(got.data(), ref.data(), n, "normals", paths[p].name, seed, j0);
        tot[p].normals += n;
        // The fused update over the same range (every eighth case: it adds no new stream).
        if (ci % 8 == 1) check_updates(paths[p], k0, k1, j0, n, ref.data(), x, y, want, got, tot[p], seed, "update");
      }
      // signs
      parallel2(n, [&](int64_t b, int64_t e) { ref_signs(k0, k1, j0 + b, e - b, ref.data() + b); });
      for (size_t p = 0; p < paths.size(); ++p) {
        std::memset(got.data(), 0xFF, sizeof(float) * n);
        signs_with(paths[p].ks, k0, k1, j0, n, got.data());
        g_failures += count_mismatches(got.data(), ref.data(), n, "signs", paths[p].name, seed, j0);
        tot[p].signs += n;
      }
      // words: n / 4 counters from the base (4 words each)
      const int64_t nc = n / 4;
      int32_t* wr = reinterpret_cast<int32_t*>(ref.data());
      int32_t* wg = reinterpret_cast<int32_t*>(got.data());
      parallel2(nc, [&](int64_t b, int64_t e) { ref_words(k0, k1, base + b, e - b, wr + 4 * b); });
      for (size_t p = 0; p < paths.size(); ++p) {
        std::memset(wg, 0xFF, sizeof(int32_t) * 4 * nc);
        words_with(paths[p].ks, k0, k1, base, nc, wg);
        g_failures += count_mismatches(wg, wr, 4 * nc, "words", paths[p].name, seed, base);
        tot[p].words += 4 * nc;
      }
    }
    std::printf("  seed 0x%016" PRIx64 " done, failures so far %" PRIu64 "\n", seed, g_failures);
    std::fflush(stdout);
  }
}

// The result must not depend on how [0, N) is split into calls.
void split_suite(const std::vector<Path>& paths, std::vector<Totals>& tot) {
  const int64_t chunks[] = {1, 3, 255, 256, 1000, 4096, 17, 64, 4 * 16 + 5};
  const uint64_t starts[] = {0, 4 * ((uint64_t{1} << 32) - 7) + 3, 4 * 0x123456789ABCDE00ull + 1};
  const int64_t N = 100003;
  std::vector<float> ref(N), got(N), x(N), y(N), want(N);
  fill_operands(x, y);
  std::vector<int32_t> wref(4 * N), wgot(4 * N);
  for (uint64_t seed : {uint64_t{1}, uint64_t{0xDEADBEEFCAFEF00Dull}}) {
    const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (uint64_t j0 : starts) {
      ref_normals(k0, k1, j0, N, ref.data());
      std::vector<float> sref(N);
      ref_signs(k0, k1, j0, N, sref.data());
      ref_words(k0, k1, j0 >> 2, N, wref.data());
      for (size_t p = 0; p < paths.size(); ++p) {
        for (int64_t ch : chunks) {
          for (int64_t i = 0; i < N; i += ch)
            normals_with(paths[p].ks, k0, k1, j0 + i, std::min<int64_t>(ch, N - i), got.data() + i);
          g_failures += count_mismatches(got.data(), ref.data(), N, "split normals", paths[p].name, seed, j0);
          for (int64_t i = 0; i < N; i += ch)
            signs_with(paths[p].ks, k0, k1, j0 + i, std::min<int64_t>(ch, N - i), got.data() + i);
          g_failures += count_mismatches(got.data(), sref.data(), N, "split signs", paths[p].name, seed, j0);
          for (int64_t i = 0; i < N; i += ch)
            words_with(paths[p].ks, k0, k1, (j0 >> 2) + i, std::min<int64_t>(ch, N - i), wgot.data() + 4 * i);
          g_failures += count_mismatches(wgot.data(), wref.data(), 4 * N, "split words", paths[p].name, seed, j0);
          ref_update(x.data(), y.data(), kA, kB, kC, ref.data(), N, want.data());
          for (int64_t i = 0; i < N; i += ch) {
            const int64_t m = std::min<int64_t>(ch, N - i);
            update_with(paths[p].ks, k0, k1, j0 + i, m, {got.data() + i, x.data() + i, y.data() + i, kA, kB, kC});
          }
          g_failures += count_mismatches(got.data(), want.data(), N, "split update", paths[p].name, seed, j0);
          tot[p].split += 7 * N;
        }
      }
    }
  }
  // Words across the 2^64 wrap of the counter, and near c_lo wraps, in uneven calls.
  for (uint64_t c0 : {~uint64_t{0} - 36, (uint64_t{1} << 32) - 1, (uint64_t{5} << 32) - 17}) {
    const int64_t n = 1000;
    std::vector<int32_t> wr(4 * n), wg(4 * n);
    ref_words(3, 4, c0, n, wr.data());
    for (size_t p = 0; p < paths.size(); ++p) {
      for (int64_t ch : {int64_t{1}, int64_t{5}, int64_t{37}, n}) {
        for (int64_t i = 0; i < n; i += ch)
          words_with(paths[p].ks, 3, 4, c0 + static_cast<uint64_t>(i), std::min<int64_t>(ch, n - i), wg.data() + 4 * i);
        g_failures += count_mismatches(wg.data(), wr.data(), 4 * n, "wrap words", paths[p].name, 3, c0);
        tot[p].split += 4 * n;
      }
    }
  }
  // Every (start mod 64, length) pair up to 300 elements: all head / tail / block shapes.
  std::vector<float> r(400), g(400), ux(400), uy(400), uw(400);
  fill_operands(ux, uy);
  for (uint64_t s0 = 0; s0 < 64; ++s0) {
    const uint64_t j0 = 4 * ((uint64_t{1} << 32) - 40) + s0;  // the wrap is in range
    for (int64_t n = 0; n <= 300; ++n) {
      ref_normals(7, 9, j0, n, r.data());
      for (size_t p = 0; p < paths.size(); ++p) {
        normals_with(paths[p].ks, 7, 9, j0, n, g.data());
        g_failures += count_mismatches(g.data(), r.data(), n, "shape normals", paths[p].name, 7, j0);
        Totals t;
        check_updates(paths[p], 7, 9, j0, n, r.data(), ux, uy, uw, g, t, 7, "shape update");
        tot[p].split += n + t.updates;
      }
    }
  }
}

// Box-Muller on every word value in both positions: counter i of 2^31 gets
// w0 = i, w1 = K * i, w2 = i + 2^31, w3 = K * (i + 2^31) (K odd: a bijection), so the
// u1 words (w0, w2) and the u2 words (w1, w3) each run over all of [0, 2^32).
void exhaustive_box_muller(const std::vector<Path>& paths) {
  const uint32_t K = 0x9E3779B1u;
  const int64_t kBatch = 1 << 20;  // counters per batch
  const int64_t total = int64_t{1} << 31;
  for (size_t p = 1; p < paths.size(); ++p) {  // skip the scalar path (it is the reference)
    uint64_t bad = 0;
    std::vector<int32_t> w(4 * kBatch);
    std::vector<float> ref(4 * kBatch), got(4 * kBatch);
    for (int64_t c = 0; c < total; c += kBatch) {
      for (int64_t i = 0; i < kBatch; ++i) {
        const uint32_t a = static_cast<uint32_t>(c + i), b = a + 0x80000000u;
        w[4 * i] = static_cast<int32_t>(a);
        w[4 * i + 1] = static_cast<int32_t>(K * a);
        w[4 * i + 2] = static_cast<int32_t>(b);
        w[4 * i + 3] = static_cast<int32_t>(K * b);
      }
      parallel2(kBatch, [&](int64_t b0, int64_t e) {
        for (int64_t i = b0; i < e; ++i) {
          const uint32_t* x = reinterpret_cast<const uint32_t*>(&w[4 * i]);
          box_muller_f32(uniform_f32(x[0]), uniform_f32(x[1]), &ref[4 * i], &ref[4 * i + 1]);
          box_muller_f32(uniform_f32(x[2]), uniform_f32(x[3]), &ref[4 * i + 2], &ref[4 * i + 3]);
        }
      });
      paths[p].ks.box_muller(w.data(), kBatch, got.data());
      bad += count_mismatches(got.data(), ref.data(), 4 * kBatch, "box-muller", paths[p].name, 0, c);
    }
    std::printf("exhaustive Box-Muller [%s]: %" PRId64 " normals (every u1 word, every u2 word), %" PRIu64
                " mismatches\n", paths[p].name, 4 * total, bad);
    g_failures += bad;
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, exhaustive = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--quick") quick = true;
    if (std::string(argv[i]) == "--exhaustive") exhaustive = true;
  }
  const std::vector<Path> paths = runnable_paths();
  std::printf("dispatched kernel: %s; paths tested:", stream_kernel_name());
  for (const auto& p : paths) std::printf(" %s", p.name);
  std::printf("\n");

  // The public API must run the dispatched set (and agree with the definition).
  {
    std::vector<float> a(10007), b(10007);
    stream_normals(5, 6, 4 * 1000 + 1, 10007, a.data());
    ref_normals(5, 6, 4 * 1000 + 1, 10007, b.data());
    g_failures += count_mismatches(a.data(), b.data(), 10007, "public stream_normals", stream_kernel_name(), 5, 4001);
    stream_signs(5, 6, 4 * 1000 + 1, 10007, a.data());
    ref_signs(5, 6, 4 * 1000 + 1, 10007, b.data());
    g_failures += count_mismatches(a.data(), b.data(), 10007, "public stream_signs", stream_kernel_name(), 5, 4001);
    std::vector<int32_t> wa(4 * 1001), wb(4 * 1001);
    stream_words(5, 6, 999, 1001, wa.data());
    ref_words(5, 6, 999, 1001, wb.data());
    g_failures += count_mismatches(wa.data(), wb.data(), 4 * 1001, "public stream_words", stream_kernel_name(), 5, 999);
    std::vector<float> x(10007), y(10007), want(10007);
    fill_operands(x, y);
    ref_normals(5, 6, 4 * 1000 + 1, 10007, b.data());
    ref_update(x.data(), y.data(), kA, kB, kC, b.data(), 10007, want.data());
    stream_update(5, 6, 4 * 1000 + 1, 10007, {a.data(), x.data(), y.data(), kA, kB, kC});
    g_failures += count_mismatches(a.data(), want.data(), 10007, "public stream_update", stream_kernel_name(), 5, 4001);
  }

  std::vector<Totals> tot(paths.size());
  const int64_t n_per_case = quick ? 200003 : 2400007;  // 42 cases
  stream_suite(paths, n_per_case, tot);
  split_suite(paths, tot);
  unit_a_suite(paths);
  for (size_t p = 0; p < paths.size(); ++p)
    std::printf("[%s] normals %" PRIu64 ", words %" PRIu64 ", signs %" PRIu64 ", updates %" PRIu64
                ", split/shape checks %" PRIu64 "\n",
                paths[p].name, tot[p].normals, tot[p].words, tot[p].signs, tot[p].updates, tot[p].split);
  if (exhaustive) exhaustive_box_muller(paths);
  std::printf("%s: %" PRIu64 " mismatching values\n", g_failures ? "FAIL" : "PASS", g_failures);
  return g_failures ? 1 : 0;
}
