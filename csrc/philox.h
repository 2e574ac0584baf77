// The fastscore noise stream, shared by the C++ (CPU) and CUDA kernels.
//
// Bit-for-bit the definition in fastscore/reference.py (read its docstring first):
// Philox4x32-10 with Triton's constants, Triton's uint32 -> uniform map, and a
// Box-Muller whose log/sin/cos use only IEEE-rounded +, -, *, /, sqrt. Every float
// operation goes through fs_add/fs_mul/... so that on the device each is an explicit
// round-to-nearest intrinsic (never contracted into an fma, never approximate), and on
// the host a plain operator compiled with -ffp-contract=off. Everything is branch-free
// so the host loops auto-vectorise.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FS_HD __host__ __device__ __forceinline__
#else
#define FS_HD inline __attribute__((always_inline))
#endif

namespace fastscore {

constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;

// Exact float32 constants, the same hex values as fastscore/reference.py.
constexpr float kUniformScale = 0x1.fffffep-32f;
constexpr float kUMin = 0x1.ad7f2ap-24f;
constexpr float kSqrt2 = 0x1.6a09e6p+0f;
constexpr float kLn2Hi = 0x1.62e3p-1f;
constexpr float kLn2Lo = 0x1.2fefa2p-17f;
constexpr float kL3 = 0x1.555556p-1f, kL5 = 0x1.99999ap-2f, kL7 = 0x1.24924ap-2f, kL9 = 0x1.c71c72p-3f;
constexpr float kS1 = 0x1.921fb6p+0f, kS3 = -0x1.4abbcep-1f, kS5 = 0x1.466bc6p-4f,
                kS7 = -0x1.32d2ccp-8f, kS9 = 0x1.507834p-13f;
constexpr float kC2 = -0x1.3bd3ccp+0f, kC4 = 0x1.03c1f0p-2f, kC6 = -0x1.55d3c8p-6f,
                kC8 = 0x1.e1f506p-11f, kC10 = -0x1.a6d1f2p-16f;

#if defined(__CUDA_ARCH__)
FS_HD float fs_add(float a, float b) { return __fadd_rn(a, b); }
FS_HD float fs_sub(float a, float b) { return __fsub_rn(a, b); }
FS_HD float fs_mul(float a, float b) { return __fmul_rn(a, b); }
FS_HD float fs_div(float a, float b) { return __fdiv_rn(a, b); }
FS_HD float fs_sqrt(float a) { return __fsqrt_rn(a); }
FS_HD double fs_add(double a, double b) { return __dadd_rn(a, b); }
FS_HD double fs_sub(double a, double b) { return __dsub_rn(a, b); }
FS_HD double fs_mul(double a, double b) { return __dmul_rn(a, b); }
FS_HD double fs_div(double a, double b) { return __ddiv_rn(a, b); }
FS_HD double fs_sqrt(double a) { return __dsqrt_rn(a); }
FS_HD int32_t fs_float_bits(float a) { return __float_as_int(a); }
FS_HD float fs_bits_float(int32_t a) { return __int_as_float(a); }
FS_HD uint32_t fs_umulhi(uint32_t a, uint32_t b) { return __umulhi(a, b); }
#else
FS_HD float fs_add(float a, float b) { return a + b; }
FS_HD float fs_sub(float a, float b) { return a - b; }
FS_HD float fs_mul(float a, float b) { return a * b; }
FS_HD float fs_div(float a, float b) { return a / b; }
FS_HD float fs_sqrt(float a) { return __builtin_sqrtf(a); }
FS_HD double fs_add(double a, double b) { return a + b; }
FS_HD double fs_sub(double a, double b) { return a - b; }
FS_HD double fs_mul(double a, double b) { return a * b; }
FS_HD double fs_div(double a, double b) { return a / b; }
FS_HD double fs_sqrt(double a) { return __builtin_sqrt(a); }
FS_HD int32_t fs_float_bits(float a) { int32_t i; std::memcpy(&i, &a, 4); return i; }
FS_HD float fs_bits_float(int32_t i) { float a; std::memcpy(&a, &i, 4); return a; }
FS_HD uint32_t fs_umulhi(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}
#endif

struct PhiloxWords {
  uint32_t w0, w1, w2, w3;
};

// Philox4x32-10 at counter (c_lo, c_hi, 0, 0) under key (k0, k1): Triton's philox_impl.
FS_HD PhiloxWords philox4x32_10(uint32_t c0, uint32_t c1, uint32_t k0, uint32_t k1) {
  uint32_t c2 = 0, c3 = 0;
#if defined(__CUDACC__)
#pragma unroll
#else
#pragma GCC unroll 10
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t old_c0 = c0, old_c2 = c2;
    c0 = fs_umulhi(kPhiloxRoundB, old_c2) ^ c1 ^ k0;
    c2 = fs_umulhi(kPhiloxRoundA, old_c0) ^ c3 ^ k1;
    c1 = kPhiloxRoundB * old_c2;
    c3 = kPhiloxRoundA * old_c0;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return {c0, c1, c2, c3};
}

// Triton's uint_to_uniform_float for 32-bit words.
FS_HD float uniform_f32(uint32_t w) {
  int32_t x = static_cast<int32_t>(w);
  x = x < 0 ? ~x : x;
  return fs_mul(static_cast<float>(x), kUniformScale);
}

// log(u), u positive and normal: see reference.log_f32.
FS_HD float log_f32(float u) {
  const int32_t bits = fs_float_bits(u);
  int32_t e = (bits >> 23) - 127;
  float m = fs_bits_float((bits & 0x7FFFFF) | 0x3F800000);
  const bool big = m > kSqrt2;
  m = big ? fs_mul(m, 0.5f) : m;
  e = big ? e + 1 : e;
  const float f = fs_sub(m, 1.0f);
  const float s = fs_div(f, fs_add(m, 1.0f));
  const float z = fs_mul(s, s);
  float r = kL9;
  r = fs_add(fs_mul(r, z), kL7);
  r = fs_add(fs_mul(r, z), kL5);
  r = fs_add(fs_mul(r, z), kL3);
  r = fs_mul(z, r);
  const float log_m = fs_sub(f, fs_mul(s, fs_sub(f, r)));
  const float ef = static_cast<float>(e);
  return fs_add(fs_mul(ef, kLn2Hi), fs_add(log_m, fs_mul(ef, kLn2Lo)));
}

// (sin 2 pi u, cos 2 pi u) for u in [0, 1): see reference.sincos_2pi_f32.
FS_HD void sincos_2pi_f32(float u, float* sin_out, float* cos_out) {
  const float t = fs_mul(u, 4.0f);
  const int32_t q = static_cast<int32_t>(t);
  const float f = fs_sub(t, static_cast<float>(q));
  const bool swap = f > 0.5f;
  const float g = swap ? fs_sub(1.0f, f) : f;
  const float z = fs_mul(g, g);
  float sp = kS9;
  sp = fs_add(fs_mul(sp, z), kS7);
  sp = fs_add(fs_mul(sp, z), kS5);
  sp = fs_add(fs_mul(sp, z), kS3);
  sp = fs_add(fs_mul(sp, z), kS1);
  sp = fs_mul(g, sp);
  float cp = kC10;
  cp = fs_add(fs_mul(cp, z), kC8);
  cp = fs_add(fs_mul(cp, z), kC6);
  cp = fs_add(fs_mul(cp, z), kC4);
  cp = fs_add(fs_mul(cp, z), kC2);
  cp = fs_add(fs_mul(cp, z), 1.0f);
  const float s_f = swap ? cp : sp;
  const float c_f = swap ? sp : cp;
  const bool odd = (q & 1) != 0;
  const float s_q = odd ? c_f : s_f;
  const float c_q = odd ? s_f : c_f;
  *sin_out = q >= 2 ? -s_q : s_q;
  *cos_out = (q == 1 || q == 2) ? -c_q : c_q;
}

// Triton's pair_uniform_to_normal with fastscore's log/sin/cos.
FS_HD void box_muller_f32(float ua, float ub, float* n_cos, float* n_sin) {
  ua = ua < kUMin ? kUMin : ua;  // tl.maximum(1e-7, u); u is never NaN
  const float r = fs_sqrt(fs_mul(-2.0f, log_f32(ua)));
  float s, c;
  sincos_2pi_f32(ub, &s, &c);
  *n_cos = fs_mul(r, c);
  *n_sin = fs_mul(r, s);
}

// The four normals of counter (c_lo, c_hi) under key (k0, k1).
FS_HD void normals4(uint32_t c_lo, uint32_t c_hi, uint32_t k0, uint32_t k1, float n[4]) {
  const PhiloxWords w = philox4x32_10(c_lo, c_hi, k0, k1);
  box_muller_f32(uniform_f32(w.w0), uniform_f32(w.w1), &n[0], &n[1]);
  box_muller_f32(uniform_f32(w.w2), uniform_f32(w.w3), &n[2], &n[3]);
}

// The Rademacher probe of a Philox word: -1 where bit 31 is set, else +1.
FS_HD float rademacher_of_word(uint32_t w) { return (w >> 31) != 0u ? -1.0f : 1.0f; }

// The k-th step seed of a run: SplitMix64's k-th output from state `seed`
// (fastscore/_common.derive_seed; ops.derive_seeds on every backend).
FS_HD uint64_t derive_seed(uint64_t seed, uint64_t k) {
  uint64_t z = seed + (k + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace fastscore
