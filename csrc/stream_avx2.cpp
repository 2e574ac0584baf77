// AVX2 kernels of the noise stream: 8 counters per ymm.
//
// Bit for bit the stream of philox.h; the design follows the Zen 3 study
// (shared/CPU-RNG.md). Every float operation of philox.h appears once, as the same
// IEEE-rounded operation on the same operands in the same order; the rewrites are exact:
//   * c2 = c3 = 0 in round 0 and a counter-independent c0 in round 1 fold away three of
//     the 20 products; round 0's A * c_lo is a running 64-bit sum (exact integer math);
//   * uniform(w) * 4 is computed as float(x) * (4 * scale) (scaling by 4 is exact);
//   * log's `big` select is integer work: mb -= big & 0x800000 (m * 0.5, exact) and
//     e -= big (big = -1 where m > sqrt 2);
//   * the four sincos selects collapse to one select on the sign bit of swap ^ (q << 31),
//     and the quadrant signs are sign-bit xors (IEEE negation is a sign flip).
// The target is plain "avx2" - deliberately WITHOUT "fma" - so the compiler cannot emit
// an fma here whatever the fp-contract setting; optimize("fp-contract=off") says so twice.
//
// Philox runs in 32-bit lanes. umulhi/mullo of a vector x by a constant M:
//   pe = vpmuludq(x, M), po = vpmuludq(x >> 32 (per qword), M)
//   hi = vpblendd(vpshufd(pe, [1,1,3,3]), po, 0xAA), lo = vpblendd(pe, vpshufd(po, [0,0,2,2]), 0xAA)
// (shuffles rather than shifts for the result halves: they run on other ports).
//
// Lane order [0,2,4,6 | 1,3,5,7]: lane l holds counter 2 * (l & 3) + (l >> 2), so the
// 4x4 output transposes stay inside 128-bit lanes (8 unpacks per 32 normals).
// The main loop runs 3 blocks (24 counters) per iteration, round-major: three
// independent chains keep the multiply and shuffle ports busy despite the spills of 16
// ymm registers (~9 % faster than 2 blocks on a Zen 4, ~12 % on a Zen 3, 4 blocks slower;
// bit-exact either way). Two whole blocks left over run as two chains; a partial last
// block is made whole in a stack buffer. The update kinds (StreamUpdate) combine each
// block's normals with x (and y) in registers instead of storing them, as in
// stream_avx512.cpp.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "philox.h"
#include "stream_kernels.h"

#define FS_AVX2_FN \
  __attribute__((target("avx2"), optimize("fp-contract=off", "schedule-insns", "sched-pressure")))
#define FS_AVX2_INLINE FS_AVX2_FN inline __attribute__((always_inline))

namespace fastscore {
namespace stream_detail {
namespace {

using VI = __m256i;
using VF = __m256;
constexpr int kLanes = 8;   // counters per block
constexpr int kBlocks = 3;  // blocks per main-loop iteration: three interleaved chains

// Per-call constants: the key schedule and the values that fold rounds 0 and 1.
// Kept as broadcast vectors in an aligned table: vpxor reads them as memory operands.
struct alignas(64) Schedule {
  VI k0[10], k1[10];
  VI r1_c2;  // umulhi(A, c_hi ^ k0) ^ k1[1]: round 1 gives c2 = c3 ^ r1_c2
  VI r2_c2;  // (A * (c_hi ^ k0)) ^ k1[2]: round 2 gives c2 = umulhi(A, c0) ^ r2_c2
};

FS_AVX2_INLINE VI bcast(uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
FS_AVX2_INLINE VF bcastf(float v) { return _mm256_set1_ps(v); }

FS_AVX2_INLINE void make_schedule(uint32_t k0, uint32_t k1, uint32_t c_hi, Schedule& s) {
  uint32_t a[10], b[10];
  for (int r = 0; r < 10; ++r) {
    a[r] = k0 + static_cast<uint32_t>(r) * kPhiloxKeyA;
    b[r] = k1 + static_cast<uint32_t>(r) * kPhiloxKeyB;
    s.k0[r] = bcast(a[r]);
    s.k1[r] = bcast(b[r]);
  }
  const uint32_t c0_r1 = c_hi ^ a[0];  // c0 after round 0, the same in every lane
  s.r1_c2 = bcast(fs_umulhi(kPhiloxRoundA, c0_r1) ^ b[1]);
  s.r2_c2 = bcast((kPhiloxRoundA * c0_r1) ^ b[2]);
}

// Even lanes from a's high dwords, odd lanes from b's high dwords (umulhi).
FS_AVX2_INLINE VI high_words(VI a, VI b) {
  return _mm256_blend_epi32(_mm256_shuffle_epi32(a, 0xF5), b, 0xAA);
}
// Even lanes from a's low dwords, odd lanes from b's low dwords (mullo).
FS_AVX2_INLINE VI low_words(VI a, VI b) {
  return _mm256_blend_epi32(a, _mm256_shuffle_epi32(b, 0xA0), 0xAA);
}
FS_AVX2_INLINE void mul_hilo(VI x, VI m, VI& hi, VI& lo) {
  const VI pe = _mm256_mul_epu32(x, m);
  const VI po = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), m);
  hi = high_words(pe, po);
  lo = low_words(pe, po);
}

// Philox4x32-10 of NB blocks from the 64-bit products A * c_lo of even / odd lanes.
template <int NB>
FS_AVX2_INLINE void philox(const Schedule& s, const VI* pe, const VI* po, VI (*w)[4]) {
  const VI mA = _mm256_set1_epi64x(kPhiloxRoundA);
  const VI mB = _mm256_set1_epi64x(kPhiloxRoundB);
  VI c0[NB], c1[NB], c2[NB], c3[NB];
#pragma GCC unroll 4
  for (int b = 0; b < NB; ++b) {  // round 0
    c2[b] = _mm256_xor_si256(high_words(pe[b], po[b]), s.k1[0]);
    c3[b] = low_words(pe[b], po[b]);
  }
#pragma GCC unroll 4
  for (int b = 0; b < NB; ++b) {  // round 1
    VI hi, lo;
    mul_hilo(c2[b], mB, hi, lo);
    c0[b] = _mm256_xor_si256(hi, s.k0[1]);
    c2[b] = _mm256_xor_si256(c3[b], s.r1_c2);
    c1[b] = lo;
  }
#pragma GCC unroll 4
  for (int b = 0; b < NB; ++b) {  // round 2
    VI hb, lb, ha, la;
    const VI x1 = _mm256_xor_si256(c1[b], s.k0[2]);  // off the multiply's critical path
    mul_hilo(c2[b], mB, hb, lb);
    mul_hilo(c0[b], mA, ha, la);
    c0[b] = _mm256_xor_si256(hb, x1);
    c2[b] = _mm256_xor_si256(ha, s.r2_c2);
    c1[b] = lb;
    c3[b] = la;
  }
#pragma GCC unroll 7
  for (int r = 3; r < 10; ++r) {
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) {
      VI hb, lb, ha, la;
      const VI x1 = _mm256_xor_si256(c1[b], s.k0[r]);
      const VI x3 = _mm256_xor_si256(c3[b], s.k1[r]);
      mul_hilo(c2[b], mB, hb, lb);
      mul_hilo(c0[b], mA, ha, la);
      c0[b] = _mm256_xor_si256(hb, x1);
      c2[b] = _mm256_xor_si256(ha, x3);
      c1[b] = lb;
      c3[b] = la;
    }
  }
#pragma GCC unroll 4
  for (int b = 0; b < NB; ++b) {
    w[b][0] = c0[b];
    w[b][1] = c1[b];
    w[b][2] = c2[b];
    w[b][3] = c3[b];
  }
}

// Triton's uint -> int fold: w < 0 ? ~w : w.
FS_AVX2_INLINE VI fold(VI w) { return _mm256_xor_si256(w, _mm256_srai_epi32(w, 31)); }

// box_muller_f32(uniform(wa), uniform(wb)) on 8 lanes: n_cos, n_sin.
FS_AVX2_INLINE void box_muller(VI wa, VI wb, VF& n_cos, VF& n_sin) {
  const VF one = bcastf(1.0f);
  // r = sqrt(-2 log(max(ua, 1e-7)))
  VF ua = _mm256_mul_ps(_mm256_cvtepi32_ps(fold(wa)), bcastf(kUniformScale));
  ua = _mm256_max_ps(ua, bcastf(kUMin));  // no NaN: same as ua < kUMin ? kUMin : ua
  const VI bits = _mm256_castps_si256(ua);
  VI mb = _mm256_or_si256(_mm256_and_si256(bits, bcast(0x7FFFFF)), bcast(0x3F800000));
  const VI big = _mm256_cmpgt_epi32(mb, bcast(static_cast<uint32_t>(fs_float_bits(kSqrt2))));  // m > sqrt 2
  mb = _mm256_sub_epi32(mb, _mm256_and_si256(big, bcast(0x00800000)));  // m * 0.5 where big
  const VI e = _mm256_sub_epi32(_mm256_add_epi32(_mm256_srli_epi32(bits, 23), bcast(static_cast<uint32_t>(-127))), big);
  const VF m = _mm256_castsi256_ps(mb);
  const VF ef = _mm256_cvtepi32_ps(e);
  const VF f = _mm256_sub_ps(m, one);
  const VF sl = _mm256_div_ps(f, _mm256_add_ps(m, one));
  const VF zl = _mm256_mul_ps(sl, sl);
  VF rl = _mm256_add_ps(_mm256_mul_ps(bcastf(kL9), zl), bcastf(kL7));
  rl = _mm256_add_ps(_mm256_mul_ps(rl, zl), bcastf(kL5));
  rl = _mm256_add_ps(_mm256_mul_ps(rl, zl), bcastf(kL3));
  rl = _mm256_mul_ps(zl, rl);
  const VF log_m = _mm256_sub_ps(f, _mm256_mul_ps(sl, _mm256_sub_ps(f, rl)));
  const VF lg = _mm256_add_ps(_mm256_mul_ps(ef, bcastf(kLn2Hi)),
                              _mm256_add_ps(log_m, _mm256_mul_ps(ef, bcastf(kLn2Lo))));
  const VF rad = _mm256_sqrt_ps(_mm256_mul_ps(bcastf(-2.0f), lg));

  // (sin, cos)(2 pi ub), t = 4 ub
  const VF t = _mm256_mul_ps(_mm256_cvtepi32_ps(fold(wb)), bcastf(4.0f * kUniformScale));
  const VI q = _mm256_cvttps_epi32(t);
  const VF fq = _mm256_sub_ps(t, _mm256_cvtepi32_ps(q));
  const VF swap = _mm256_cmp_ps(fq, bcastf(0.5f), _CMP_GT_OQ);
  const VF g = _mm256_blendv_ps(fq, _mm256_sub_ps(one, fq), swap);
  const VF z = _mm256_mul_ps(g, g);
  VF sp = _mm256_add_ps(_mm256_mul_ps(bcastf(kS9), z), bcastf(kS7));
  sp = _mm256_add_ps(_mm256_mul_ps(sp, z), bcastf(kS5));
  sp = _mm256_add_ps(_mm256_mul_ps(sp, z), bcastf(kS3));
  sp = _mm256_add_ps(_mm256_mul_ps(sp, z), bcastf(kS1));
  sp = _mm256_mul_ps(g, sp);
  VF cp = _mm256_add_ps(_mm256_mul_ps(bcastf(kC10), z), bcastf(kC8));
  cp = _mm256_add_ps(_mm256_mul_ps(cp, z), bcastf(kC6));
  cp = _mm256_add_ps(_mm256_mul_ps(cp, z), bcastf(kC4));
  cp = _mm256_add_ps(_mm256_mul_ps(cp, z), bcastf(kC2));
  cp = _mm256_add_ps(_mm256_mul_ps(cp, z), one);
  // blendv reads only sign bits: sel's sign bit = swap ^ (q odd)
  const VI odd = _mm256_slli_epi32(q, 31);
  const VF sel = _mm256_xor_ps(swap, _mm256_castsi256_ps(odd));
  const VF s_q = _mm256_blendv_ps(sp, cp, sel);
  const VF c_q = _mm256_blendv_ps(cp, sp, sel);
  // sin negated for q in {2, 3} (bit 1), cos for q in {1, 2} (bit 1 ^ bit 0)
  const VI ss = _mm256_and_si256(_mm256_slli_epi32(q, 30), bcast(0x80000000u));
  const VI sc = _mm256_xor_si256(ss, odd);
  const VF sn = _mm256_xor_ps(s_q, _mm256_castsi256_ps(ss));
  const VF cs = _mm256_xor_ps(c_q, _mm256_castsi256_ps(sc));
  n_cos = _mm256_mul_ps(rad, cs);
  n_sin = _mm256_mul_ps(rad, sn);
}

// 4x4 transpose inside each 128-bit lane: with the lane order, vector r of the result
// holds counters 2r, 2r + 1 of the block, interleaved (values 8r .. 8r + 7).
FS_AVX2_INLINE void interleave(VF v0, VF v1, VF v2, VF v3, VF (&r)[4]) {
  const __m256d a = _mm256_castps_pd(_mm256_unpacklo_ps(v0, v1));
  const __m256d b = _mm256_castps_pd(_mm256_unpackhi_ps(v0, v1));
  const __m256d c = _mm256_castps_pd(_mm256_unpacklo_ps(v2, v3));
  const __m256d d = _mm256_castps_pd(_mm256_unpackhi_ps(v2, v3));
  r[0] = _mm256_castpd_ps(_mm256_unpacklo_pd(a, c));
  r[1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a, c));
  r[2] = _mm256_castpd_ps(_mm256_unpacklo_pd(b, d));
  r[3] = _mm256_castpd_ps(_mm256_unpackhi_pd(b, d));
}

// 32 values at out.
FS_AVX2_INLINE void store_interleaved(VF v0, VF v1, VF v2, VF v3, float* out) {
  VF r[4];
  interleave(v0, v1, v2, v3, r);
  for (int k = 0; k < 4; ++k) _mm256_storeu_ps(out + 8 * k, r[k]);
}

// What a kernel writes: normals, raw words, Rademacher signs (+-1.0f), or the update
// of StreamUpdate with y (kUpdateXY) or without (kUpdateX).
enum class Out { kNormals, kWords, kSigns, kUpdateXY, kUpdateX };

// StreamUpdate's operands, the coefficients broadcast once per call.
struct UpdateOperands {
  float* out;
  const float* x;
  const float* y;
  VF a, b, c;
  bool a_one;  // x for a * x (skips_unit_product)
};

FS_AVX2_INLINE UpdateOperands update_operands(const StreamUpdate* u) {
  const VF zero = _mm256_setzero_ps();
  if (u == nullptr) return {nullptr, nullptr, nullptr, zero, zero, zero, false};  // the other kinds: unused
  return {u->out, u->x, u->y, bcastf(u->a), bcastf(u->b), bcastf(u->c), skips_unit_product(u->a)};
}

// The update of 32 values at out (a block's normals v0..v3): the products and sums of
// update_from, in its order, on 8 lanes; one prefetch per 64-byte line.
template <Out kind>
FS_AVX2_INLINE void update_interleaved(const UpdateOperands& u, VF v0, VF v1, VF v2, VF v3, float* out) {
  VF r[4];
  interleave(v0, v1, v2, v3, r);
  const std::ptrdiff_t at = out - u.out;
  for (int k = 0; k < 4; ++k) {
    const std::ptrdiff_t p = at + 8 * k;
    if (k % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(u.x + p + kUpdatePrefetchAhead), _MM_HINT_T0);
    const VF xv = _mm256_loadu_ps(u.x + p);
    VF m = u.a_one ? xv : _mm256_mul_ps(u.a, xv);
    if constexpr (kind == Out::kUpdateXY) {
      if (k % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(u.y + p + kUpdatePrefetchAhead), _MM_HINT_T0);
      m = _mm256_add_ps(m, _mm256_mul_ps(u.b, _mm256_loadu_ps(u.y + p)));
    }
    _mm256_storeu_ps(out + 8 * k, _mm256_add_ps(m, _mm256_mul_ps(u.c, r[k])));
  }
}

// From the words of NB blocks to the output, block b at out + 32 * b (values); u: the
// update kinds' operands.
template <Out kind, int NB>
FS_AVX2_INLINE void finish(VI (*w)[4], void* out, const UpdateOperands& u) {
  float* o = static_cast<float*>(out);
  if constexpr (kind == Out::kNormals || kind == Out::kUpdateXY || kind == Out::kUpdateX) {
    VF n[NB][4];
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) {
      box_muller(w[b][0], w[b][1], n[b][0], n[b][1]);
      box_muller(w[b][2], w[b][3], n[b][2], n[b][3]);
    }
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) {
      if constexpr (kind == Out::kNormals) {
        store_interleaved(n[b][0], n[b][1], n[b][2], n[b][3], o + 32 * b);
      } else {
        update_interleaved<kind>(u, n[b][0], n[b][1], n[b][2], n[b][3], o + 32 * b);
      }
    }
  } else if constexpr (kind == Out::kWords) {
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b)
      store_interleaved(_mm256_castsi256_ps(w[b][0]), _mm256_castsi256_ps(w[b][1]),
                        _mm256_castsi256_ps(w[b][2]), _mm256_castsi256_ps(w[b][3]), o + 32 * b);
  } else {
    // +1.0f or -1.0f: the word's sign bit on the bit pattern of 1.0f.
    const VI sign = bcast(0x80000000u), one = bcast(0x3F800000u);
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) {
      VF v[4];
      for (int k = 0; k < 4; ++k) v[k] = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(w[b][k], sign), one));
      store_interleaved(v[0], v[1], v[2], v[3], o + 32 * b);
    }
  }
}

// NB consecutive blocks of 8 counters, from their A * c_lo products.
template <Out kind, int NB>
FS_AVX2_INLINE void blocks(const Schedule& s, const VI* pe, const VI* po, void* out, const UpdateOperands& u) {
  VI w[NB][4];
  philox<NB>(s, pe, po, w);
  finish<kind, NB>(w, out, u);
}

// The kernel contract of stream_kernels.h: values 4 * c0 + [0, nv), no c_lo wrap.
// The update kinds write upd->out (out_v is null).
template <Out kind>
FS_AVX2_FN void run(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, void* out_v,
                    const StreamUpdate* upd = nullptr) {
  const UpdateOperands u = update_operands(upd);
  char* out = upd != nullptr ? reinterpret_cast<char*>(upd->out) : static_cast<char*>(out_v);  // 16 B a counter
  const uint32_t c_hi = static_cast<uint32_t>(c0 >> 32);
  const uint32_t c_lo = static_cast<uint32_t>(c0);
  Schedule s;
  make_schedule(k0, k1, c_hi, s);
  // A * (c_lo + offset of the lane), exact in 64 bits, for even and odd lanes.
  alignas(32) uint64_t ie[4], io[4];
  for (int q = 0; q < 4; ++q) {
    const int le = 2 * q, lo_ = 2 * q + 1;
    ie[q] = uint64_t{kPhiloxRoundA} * static_cast<uint32_t>(2 * (le & 3) + (le >> 2));
    io[q] = uint64_t{kPhiloxRoundA} * static_cast<uint32_t>(2 * (lo_ & 3) + (lo_ >> 2));
  }
  const VI base = _mm256_set1_epi64x(static_cast<long long>(uint64_t{kPhiloxRoundA} * c_lo));
  const VI step = _mm256_set1_epi64x(static_cast<long long>(uint64_t{kPhiloxRoundA} * kLanes));
  VI pe[kBlocks], po[kBlocks];
  pe[0] = _mm256_add_epi64(base, _mm256_load_si256(reinterpret_cast<const VI*>(ie)));
  po[0] = _mm256_add_epi64(base, _mm256_load_si256(reinterpret_cast<const VI*>(io)));
  for (int b = 1; b < kBlocks; ++b) {
    pe[b] = _mm256_add_epi64(pe[b - 1], step);
    po[b] = _mm256_add_epi64(po[b - 1], step);
  }
  const VI step_all = _mm256_set1_epi64x(static_cast<long long>(uint64_t{kPhiloxRoundA} * kLanes * kBlocks));

  const int64_t nc = nv >> 2;  // whole counters
  int64_t i = 0;               // counters done
  for (; i + kBlocks * kLanes <= nc; i += kBlocks * kLanes) {
    blocks<kind, kBlocks>(s, pe, po, out + 16 * i, u);
    for (int b = 0; b < kBlocks; ++b) {
      pe[b] = _mm256_add_epi64(pe[b], step_all);
      po[b] = _mm256_add_epi64(po[b], step_all);
    }
  }
  // Whole blocks left (0, 1 or 2): two as two chains. One at a time, a 1024-value chunk
  // (the fused ops' unit) took 1.17x the time per value of a long call on a Zen 3; 1.02x so.
  static_assert(kBlocks == 3, "at most two whole blocks are left after the main loop");
  if (i + 2 * kLanes <= nc) {
    blocks<kind, 2>(s, pe, po, out + 16 * i, u);
    i += 2 * kLanes;
    pe[0] = pe[2];
    po[0] = po[2];
  } else if (i + kLanes <= nc) {
    blocks<kind, 1>(s, pe, po, out + 16 * i, u);
    i += kLanes;
    pe[0] = pe[1];
    po[0] = po[1];
  }
  const int64_t rest = nv - 4 * i;  // < 4 * kLanes values: one block into a buffer
  if (rest > 0) {
    alignas(32) float buf[4 * kLanes];
    constexpr Out made = kind == Out::kUpdateXY || kind == Out::kUpdateX ? Out::kNormals : kind;
    blocks<made, 1>(s, pe, po, buf, u);  // lanes past the range are computed and dropped
    if (upd != nullptr) {
      update_from(shifted(*upd, 4 * i), buf, rest);
    } else {
      std::memcpy(out + 16 * i, buf, static_cast<size_t>(4 * rest));
    }
  }
}

FS_AVX2_FN void normals_avx2(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, float* out) {
  run<Out::kNormals>(k0, k1, c0, nv, out);
}
FS_AVX2_FN void words_avx2(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, int32_t* out) {
  run<Out::kWords>(k0, k1, c0, nv, out);
}
FS_AVX2_FN void signs_avx2(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, float* out) {
  run<Out::kSigns>(k0, k1, c0, nv, out);
}

FS_AVX2_FN void update_avx2(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, const StreamUpdate& u) {
  if (u.y != nullptr) {
    run<Out::kUpdateXY>(k0, k1, c0, nv, nullptr, &u);
  } else {
    run<Out::kUpdateX>(k0, k1, c0, nv, nullptr, &u);
  }
}

// Box-Muller alone (testing): words in the stream_words layout -> normals.
FS_AVX2_FN void box_muller_avx2(const int32_t* words, int64_t nc, float* out) {
  for (int64_t i = 0; i < nc; i += kLanes) {
    alignas(32) int32_t in[4 * kLanes];
    alignas(32) float res[4 * kLanes];
    const int64_t m = nc - i < kLanes ? nc - i : kLanes;
    std::memset(in, 0, sizeof in);
    std::memcpy(in, words + 4 * i, static_cast<size_t>(16 * m));
    VF v[4];
    for (int k = 0; k < 4; ++k) v[k] = _mm256_load_ps(reinterpret_cast<const float*>(in) + 8 * k);
    store_interleaved(v[0], v[1], v[2], v[3], res);  // the transpose is its own inverse
    VI w[4];
    for (int k = 0; k < 4; ++k) w[k] = _mm256_load_si256(reinterpret_cast<const VI*>(res + 8 * k));
    VF n[4];
    box_muller(w[0], w[1], n[0], n[1]);
    box_muller(w[2], w[3], n[2], n[3]);
    store_interleaved(n[0], n[1], n[2], n[3], res);
    std::memcpy(out + 4 * i, res, static_cast<size_t>(16 * m));
  }
}

}  // namespace

Kernels avx2_kernels() { return {"avx2", normals_avx2, words_avx2, signs_avx2, update_avx2, box_muller_avx2}; }

}  // namespace stream_detail
}  // namespace fastscore
