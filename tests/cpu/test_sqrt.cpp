// Bitwise test of exact_sqrt.cpp: every path this CPU can run against std::sqrt (the
// correctly rounded definition), >= 10^8 values per path:
//   random bit patterns (every exponent: subnormals, inf, NaN, negatives), random values in
//   [1, 4), values next to rounding midpoints (a = RN((q + ulp/2)^2) +- a few ulps, the hard
//   cases of the rounding decision), squares q^2 +- a few ulps, powers of two +- a few ulps,
//   the edges of the estimate's range (2^-900, 2^900) and the special values;
// every array length 0..40 (the masked tail) and unaligned starts.
//   ./test_sqrt [values per path]     exit status 0 only if every value matched bit for bit.
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_features.h"
#include "exact_sqrt.h"

using namespace fastscore;

namespace {

uint64_t g_state = 0x9E3779B97F4A7C15ull;
uint64_t next() {  // splitmix64
  uint64_t z = (g_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
double from_bits(uint64_t b) {
  double d;
  std::memcpy(&d, &b, 8);
  return d;
}
double step_ulps(double a, int k) {  // a moved by k ulps (a > 0 finite)
  for (; k > 0; --k) a = std::nextafter(a, std::numeric_limits<double>::infinity());
  for (; k < 0; ++k) a = std::nextafter(a, 0.0);
  return a;
}
double random_q() {  // a random double in [2^-449, 2^449]
  return std::ldexp(1.0 + static_cast<double>(next() >> 12) * 0x1p-52, static_cast<int>(next() % 898) - 449);
}

// One value of kind k.
double sample(int kind) {
  switch (kind) {
    case 0: return from_bits(next());                                       // anything
    case 1: return std::ldexp(1.0 + static_cast<double>(next() >> 12) * 0x1p-52, static_cast<int>(next() & 1));
    case 2: {                                                               // next to a midpoint
      const double q = random_q();
      const long double m = static_cast<long double>(q) + (std::nextafter(q, 1e308) - q) / 2.0L;
      return step_ulps(static_cast<double>(m * m), static_cast<int>(next() % 7) - 3);
    }
    case 3: {                                                               // a square +- ulps
      const double q = std::ldexp(static_cast<double>(next() >> 38), static_cast<int>(next() % 800) - 420);
      return q > 0 ? step_ulps(q * q, static_cast<int>(next() % 7) - 3) : 0.0;
    }
    case 4: {                                                               // powers of two, range edges
      static const int edges[] = {-900, 900, -899, 899, -1, 0, 1, -1022, 1023};
      const int e = next() % 2 ? static_cast<int>(next() % 1800) - 900 : edges[next() % 9];
      return step_ulps(std::ldexp(1.0, e), static_cast<int>(next() % 9) - 4);
    }
    default: return from_bits(next() >> 1);                                  // positive, any exponent
  }
}

uint64_t compare(const char* path, void (*fn)(double*, int64_t), int64_t values) {
  constexpr int64_t kBatch = 1 << 16;
  std::vector<double> a(kBatch + 1), got(kBatch + 1);
  uint64_t bad = 0, done = 0;
  const double special[] = {0.0, -0.0, std::numeric_limits<double>::infinity(), -1.0,
                            std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::denorm_min(),
                            std::numeric_limits<double>::min(), std::numeric_limits<double>::max(),
                            -std::numeric_limits<double>::infinity(), 0x1p-900, 0x1p900};
  for (int64_t len = 0; len <= 40; ++len) {  // every tail length, unaligned start
    for (int64_t i = 0; i < len; ++i) a[1 + i] = i < 11 ? special[(i + len) % 11] : sample(static_cast<int>(i % 6));
    std::memcpy(got.data(), a.data(), sizeof(double) * (len + 2));
    fn(got.data() + 1, len);
    for (int64_t i = 0; i < len + 2; ++i) {
      const double want = i >= 1 && i <= len ? std::sqrt(a[i]) : a[i];  // outside: untouched
      if (std::memcmp(&want, &got[i], 8) != 0) ++bad;
    }
    done += len;
  }
  while (done < static_cast<uint64_t>(values)) {
    for (int64_t i = 0; i < kBatch; ++i) a[i] = sample(static_cast<int>(i % 6));
    std::memcpy(got.data(), a.data(), sizeof(double) * kBatch);
    fn(got.data(), kBatch);
    for (int64_t i = 0; i < kBatch; ++i) {
      const double want = std::sqrt(a[i]);
      if (std::memcmp(&want, &got[i], 8) != 0) {
        if (bad < 10) std::printf("  [%s] sqrt(%a): got %a, want %a\n", path, a[i], got[i], want);
        ++bad;
      }
    }
    done += kBatch;
  }
  std::printf("[%s] values %" PRIu64 ", mismatches %" PRIu64 "\n", path, done, bad);
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t values = argc > 1 ? std::atoll(argv[1]) : 100000000;
  uint64_t bad = 0;
  std::printf("paths tested:");
  const bool avx512 = cpu_simd_level() >= 2;
  std::printf(" portable%s\n", avx512 ? " avx512" : "");
  bad += compare("portable", sqrt_in_place_portable, values);
  if (avx512) bad += compare("avx512", sqrt_in_place_avx512, values);
  bad += compare("dispatched", sqrt_in_place, values / 100);
  std::printf("%s: %" PRIu64 " mismatching values\n", bad ? "FAIL" : "PASS", bad);
  return bad ? 1 : 0;
}
