// AVX-512 kernels of the noise stream (AVX-512 F + VL + DQ + BW): 16 counters per zmm.
//
// Bit for bit the stream of philox.h. Every float operation of philox.h appears here
// once, as the same IEEE-rounded operation on the same operands in the same order; the
// rewrites below are all exact:
//   * c2 = c3 = 0 in round 0 and a counter-independent c0 in round 1 fold away three of
//     the 20 products; round 0's A * c_lo is a running 64-bit sum (exact integer math);
//   * uniform(w) * 4 is computed as float(x) * (4 * scale): scaling by 4 is exact, so
//     RN(x * scale) * 4 == RN(x * 4 * scale);
//   * log's `big ? m * 0.5 : m` is an exponent decrement under a mask (exact), and
//     float(e + big) is vgetexpps(u) (+1.0 under the mask): both exact small integers;
//   * sincos' f = t - float(trunc(t)) is vreduceps(t, truncate): t - trunc(t) is exact;
//   * the four selects collapse to one select on swap ^ odd, and the quadrant signs are
//     sign-bit xors (IEEE negation is a sign flip): sin by bit 1 of q, cos by bit 1 of q+1.
// No fma may appear: every function carries optimize("fp-contract=off") (and the build
// uses -ffp-contract=off too); check_no_fma.sh verifies the object code.
//
// Philox runs in 32-bit lanes. umulhi/mullo of a vector x by a constant M:
//   pe = vpmuludq(x, M), po = vpmuludq(x >> 64:32, M)  (even / odd lanes' 64-bit products)
//   hi = vpshufd{odd lanes from po, even lanes from pe's high dwords}   (one masked shuffle)
//   lo = vpshufd{even lanes from pe, odd lanes from po's low dwords}     (one masked shuffle)
// and the three-way xors of a round are single vpternlogd.
//
// Lane order: lane l of a block holds counter 4 * (l & 3) + (l >> 2), so the 4x4
// transposes of the output (n0..n3 -> interleaved) stay inside 128-bit lanes: 8
// unpacks per 64 normals and four full-width stores, no buffer.
//
// The main loop runs 2 blocks (32 counters) per stage, written round-major so the two
// dependency chains interleave, and software-pipelined: the Philox of the next 2 blocks
// sits in the same basic block as the Box-Muller of the current 2.
// A partial last block is made whole in a stack buffer; the stream's bits never depend
// on where a block starts.
//
// The update kinds (StreamUpdate) run the same loop and, instead of storing a block's
// normals, load x (and y) at their place, combine and store out: no buffer, and the
// loads interleave with the next blocks' arithmetic.

// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm512_undefined_*()
// (GCC PR 105593, fixed in 12.3/13); the warning is spurious.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "philox.h"
#include "stream_kernels.h"

// Per-function target and code-generation options: this file compiles with the
// project's ordinary flags (no -mavx512f, no per-file flags needed). fp-contract=off is
// repeated here so that no build can turn a mul + add into an fma; the scheduling
// options interleave the two blocks' chains before register allocation.
#define FS_AVX512_FN                                                     \
  __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw"),           \
                 optimize("fp-contract=off", "schedule-insns", "sched-pressure")))
#define FS_AVX512_INLINE FS_AVX512_FN inline __attribute__((always_inline))

namespace fastscore {
namespace stream_detail {
namespace {

using VI = __m512i;
using VF = __m512;
constexpr int kLanes = 16;  // counters per block

// Per-call constants: the key schedule (read as {1to16} broadcast memory operands) and
// the values that fold rounds 0 and 1 for a fixed c_hi.
struct Schedule {
  uint32_t k0[10], k1[10];
  uint32_t r1_c2;  // umulhi(A, c_hi ^ k0) ^ k1[1]: round 1 gives c2 = c3 ^ r1_c2
  uint32_t r2_c2;  // (A * (c_hi ^ k0)) ^ k1[2]: round 2 gives c2 = umulhi(A, c0) ^ r2_c2
};

FS_AVX512_INLINE Schedule make_schedule(uint32_t k0, uint32_t k1, uint32_t c_hi) {
  Schedule s;
  for (int r = 0; r < 10; ++r) {
    s.k0[r] = k0 + static_cast<uint32_t>(r) * kPhiloxKeyA;
    s.k1[r] = k1 + static_cast<uint32_t>(r) * kPhiloxKeyB;
  }
  const uint32_t c0_r1 = c_hi ^ s.k0[0];  // c0 after round 0, the same in every lane
  s.r1_c2 = fs_umulhi(kPhiloxRoundA, c0_r1) ^ s.k1[1];
  s.r2_c2 = (kPhiloxRoundA * c0_r1) ^ s.k1[2];
  return s;
}

FS_AVX512_INLINE VI bcast(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
FS_AVX512_INLINE VF bcastf(float v) { return _mm512_set1_ps(v); }

// Even lanes from a's high dwords, odd lanes from b's high dwords: the umulhi of the two
// sets of 64-bit products a (even lanes' products) and b (odd lanes').
FS_AVX512_INLINE VI high_words(VI a, VI b) {
  return _mm512_mask_shuffle_epi32(b, 0x5555, a, _MM_PERM_CDAB);
}
// Even lanes from a's low dwords, odd lanes from b's low dwords: the 32-bit products.
FS_AVX512_INLINE VI low_words(VI a, VI b) {
  return _mm512_mask_shuffle_epi32(a, 0xAAAA, b, _MM_PERM_CDAB);
}
FS_AVX512_INLINE void mul_hilo(VI x, VI m, VI& hi, VI& lo) {
  const VI pe = _mm512_mul_epu32(x, m);
  const VI po = _mm512_mul_epu32(_mm512_srli_epi64(x, 32), m);
  hi = high_words(pe, po);
  lo = low_words(pe, po);
}
FS_AVX512_INLINE VI xor3(VI a, VI b, VI c) { return _mm512_ternarylogic_epi32(a, b, c, 0x96); }

// Philox4x32-10 of NB blocks. pe[b] / po[b]: A * c_lo of the block's even / odd lanes as
// exact 64-bit products (qword lanes). w[b][k]: word k of the block's 16 counters.
template <int NB>
FS_AVX512_INLINE void philox(const Schedule& s, const VI* pe, const VI* po, VI (*w)[4]) {
  const VI mA = _mm512_set1_epi64(kPhiloxRoundA);
  const VI mB = _mm512_set1_epi64(kPhiloxRoundB);
  VI c0[NB], c1[NB], c2[NB], c3[NB];
  // Round 0 (c2 = c3 = 0): c0 = c_hi ^ k0 is uniform and lives in the schedule.
#pragma GCC unroll 4
  for (int b = 0; b < NB; ++b) {
    c2[b] = _mm512_xor_si512(high_words(pe[b], po[b]), bcast(s.k1[0]));
    c3[b] = low_words(pe[b], po[b]);
  }
  // Round 1 (c1 = 0, c0 uniform): one vector product.
#pragma GCC unroll 4
  for (int b = 0; b < NB; ++b) {
    VI hi, lo;
    mul_hilo(c2[b], mB, hi, lo);
    c0[b] = _mm512_xor_si512(hi, bcast(s.k0[1]));
    c2[b] = _mm512_xor_si512(c3[b], bcast(s.r1_c2));
    c1[b] = lo;
  }
  // Round 2 (c3 uniform).
#pragma GCC unroll 4
  for (int b = 0; b < NB; ++b) {
    VI hb, lb, ha, la;
    mul_hilo(c2[b], mB, hb, lb);
    mul_hilo(c0[b], mA, ha, la);
    c0[b] = xor3(hb, c1[b], bcast(s.k0[2]));
    c2[b] = _mm512_xor_si512(ha, bcast(s.r2_c2));
    c1[b] = lb;
    c3[b] = la;
  }
#pragma GCC unroll 7
  for (int r = 3; r < 10; ++r) {
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) {
      VI hb, lb, ha, la;
      mul_hilo(c2[b], mB, hb, lb);
      mul_hilo(c0[b], mA, ha, la);
      c0[b] = xor3(hb, c1[b], bcast(s.k0[r]));
      c2[b] = xor3(ha, c3[b], bcast(s.k1[r]));
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
FS_AVX512_INLINE VI fold(VI w) { return _mm512_xor_si512(w, _mm512_srai_epi32(w, 31)); }

// box_muller_f32(uniform(wa), uniform(wb)) on 16 lanes: n_cos, n_sin.
FS_AVX512_INLINE void box_muller(VI wa, VI wb, VF& n_cos, VF& n_sin) {
  const VF one = bcastf(1.0f);
  // r = sqrt(-2 log(max(ua, 1e-7)))
  VF ua = _mm512_mul_ps(_mm512_cvtepi32_ps(fold(wa)), bcastf(kUniformScale));
  ua = _mm512_max_ps(ua, bcastf(kUMin));  // no NaN, no zero: same as ua < kUMin ? kUMin : ua
  const VI bits = _mm512_castps_si512(ua);
  VI mb = _mm512_ternarylogic_epi32(bits, bcast(0x7FFFFF), bcast(0x3F800000), 0xEA);  // (a & b) | c
  const __mmask16 big = _mm512_cmpgt_epi32_mask(mb, bcast(static_cast<uint32_t>(fs_float_bits(kSqrt2))));
  mb = _mm512_mask_sub_epi32(mb, big, mb, bcast(0x00800000));  // m * 0.5 where big
  const VF m = _mm512_castsi512_ps(mb);
  VF ef = _mm512_getexp_ps(ua);                 // float((bits >> 23) - 127), u normal
  ef = _mm512_mask_add_ps(ef, big, ef, one);    // e + 1 where big
  const VF f = _mm512_sub_ps(m, one);
  const VF sl = _mm512_div_ps(f, _mm512_add_ps(m, one));
  const VF zl = _mm512_mul_ps(sl, sl);
  VF rl = _mm512_add_ps(_mm512_mul_ps(bcastf(kL9), zl), bcastf(kL7));
  rl = _mm512_add_ps(_mm512_mul_ps(rl, zl), bcastf(kL5));
  rl = _mm512_add_ps(_mm512_mul_ps(rl, zl), bcastf(kL3));
  rl = _mm512_mul_ps(zl, rl);
  const VF log_m = _mm512_sub_ps(f, _mm512_mul_ps(sl, _mm512_sub_ps(f, rl)));
  const VF lg = _mm512_add_ps(_mm512_mul_ps(ef, bcastf(kLn2Hi)),
                              _mm512_add_ps(log_m, _mm512_mul_ps(ef, bcastf(kLn2Lo))));
  const VF rad = _mm512_sqrt_ps(_mm512_mul_ps(bcastf(-2.0f), lg));

  // (sin, cos)(2 pi ub), t = 4 ub
  const VF t = _mm512_mul_ps(_mm512_cvtepi32_ps(fold(wb)), bcastf(4.0f * kUniformScale));
  const VI q = _mm512_cvttps_epi32(t);
  const VF fq = _mm512_reduce_ps(t, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);  // t - float(q)
  const __mmask16 swap = _mm512_cmp_ps_mask(fq, bcastf(0.5f), _CMP_GT_OQ);
  const VF g = _mm512_mask_sub_ps(fq, swap, one, fq);  // swap ? 1 - f : f
  const VF z = _mm512_mul_ps(g, g);
  VF sp = _mm512_add_ps(_mm512_mul_ps(bcastf(kS9), z), bcastf(kS7));
  sp = _mm512_add_ps(_mm512_mul_ps(sp, z), bcastf(kS5));
  sp = _mm512_add_ps(_mm512_mul_ps(sp, z), bcastf(kS3));
  sp = _mm512_add_ps(_mm512_mul_ps(sp, z), bcastf(kS1));
  sp = _mm512_mul_ps(g, sp);
  VF cp = _mm512_add_ps(_mm512_mul_ps(bcastf(kC10), z), bcastf(kC8));
  cp = _mm512_add_ps(_mm512_mul_ps(cp, z), bcastf(kC6));
  cp = _mm512_add_ps(_mm512_mul_ps(cp, z), bcastf(kC4));
  cp = _mm512_add_ps(_mm512_mul_ps(cp, z), bcastf(kC2));
  cp = _mm512_add_ps(_mm512_mul_ps(cp, z), one);
  // s_q = (swap ^ odd) ? cp : sp, c_q = (swap ^ odd) ? sp : cp
  const __mmask16 sel = _kxor_mask16(swap, _mm512_test_epi32_mask(q, bcast(1)));
  const VF s_q = _mm512_mask_blend_ps(sel, sp, cp);
  const VF c_q = _mm512_mask_blend_ps(sel, cp, sp);
  // sin negated for q in {2, 3} (bit 1 of q), cos for q in {1, 2} (bit 1 of q + 1)
  const VI qs = _mm512_slli_epi32(q, 30);
  const VI qc = _mm512_add_epi32(qs, bcast(1u << 30));
  const VI sign = bcast(0x80000000u);
  const VF sn = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(s_q), qs, sign, 0x78));  // a ^ (b & c)
  const VF cs = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(c_q), qc, sign, 0x78));
  n_cos = _mm512_mul_ps(rad, cs);
  n_sin = _mm512_mul_ps(rad, sn);
}

// 4x4 transpose inside each 128-bit lane: with the block's lane order, vector r of the
// result holds counters 4r .. 4r + 3 of the block, interleaved (values 16r .. 16r + 15).
FS_AVX512_INLINE void interleave(VF v0, VF v1, VF v2, VF v3, VF (&r)[4]) {
  const __m512d a = _mm512_castps_pd(_mm512_unpacklo_ps(v0, v1));
  const __m512d b = _mm512_castps_pd(_mm512_unpackhi_ps(v0, v1));
  const __m512d c = _mm512_castps_pd(_mm512_unpacklo_ps(v2, v3));
  const __m512d d = _mm512_castps_pd(_mm512_unpackhi_ps(v2, v3));
  r[0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
  r[1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
  r[2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
  r[3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
}

// 64 values at out.
FS_AVX512_INLINE void store_interleaved(VF v0, VF v1, VF v2, VF v3, float* out) {
  VF r[4];
  interleave(v0, v1, v2, v3, r);
  for (int k = 0; k < 4; ++k) _mm512_storeu_ps(out + 16 * k, r[k]);
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

FS_AVX512_INLINE UpdateOperands update_operands(const StreamUpdate* u) {
  const VF zero = _mm512_setzero_ps();
  if (u == nullptr) return {nullptr, nullptr, nullptr, zero, zero, zero, false};  // the other kinds: unused
  return {u->out, u->x, u->y, _mm512_set1_ps(u->a), _mm512_set1_ps(u->b), _mm512_set1_ps(u->c), skips_unit_product(u->a)};
}

// The update of 64 values at out (a block's normals v0..v3): the products and sums of
// update_from, in its order, on 16 lanes.
template <Out kind>
FS_AVX512_INLINE void update_interleaved(const UpdateOperands& u, VF v0, VF v1, VF v2, VF v3, float* out) {
  VF r[4];
  interleave(v0, v1, v2, v3, r);
  const std::ptrdiff_t at = out - u.out;
  for (int k = 0; k < 4; ++k) {
    const std::ptrdiff_t p = at + 16 * k;
    _mm_prefetch(reinterpret_cast<const char*>(u.x + p + kUpdatePrefetchAhead), _MM_HINT_T0);
    const VF xv = _mm512_loadu_ps(u.x + p);
    VF m = u.a_one ? xv : _mm512_mul_ps(u.a, xv);
    if constexpr (kind == Out::kUpdateXY) {
      _mm_prefetch(reinterpret_cast<const char*>(u.y + p + kUpdatePrefetchAhead), _MM_HINT_T0);
      m = _mm512_add_ps(m, _mm512_mul_ps(u.b, _mm512_loadu_ps(u.y + p)));
    }
    _mm512_storeu_ps(out + 16 * k, _mm512_add_ps(m, _mm512_mul_ps(u.c, r[k])));
  }
}

// From the words of NB blocks to the output, block b at out + 64 * b (values); u: the
// update kinds' operands.
template <Out kind, int NB>
FS_AVX512_INLINE void finish(VI (*w)[4], void* out, const UpdateOperands& u) {
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
        store_interleaved(n[b][0], n[b][1], n[b][2], n[b][3], o + 64 * b);
      } else {
        update_interleaved<kind>(u, n[b][0], n[b][1], n[b][2], n[b][3], o + 64 * b);
      }
    }
  } else if constexpr (kind == Out::kWords) {
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b)
      store_interleaved(_mm512_castsi512_ps(w[b][0]), _mm512_castsi512_ps(w[b][1]),
                        _mm512_castsi512_ps(w[b][2]), _mm512_castsi512_ps(w[b][3]), o + 64 * b);
  } else {
    // +1.0f or -1.0f: the word's sign bit on the bit pattern of 1.0f.
    const VI sign = bcast(0x80000000u), one = bcast(0x3F800000u);
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) {
      VF v[4];
      for (int k = 0; k < 4; ++k) v[k] = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(w[b][k], sign, one, 0xEA));
      store_interleaved(v[0], v[1], v[2], v[3], o + 64 * b);
    }
  }
}

// NB consecutive blocks of 16 counters, from their A * c_lo products.
template <Out kind, int NB>
FS_AVX512_INLINE void blocks(const Schedule& s, const VI* pe, const VI* po, void* out, const UpdateOperands& u) {
  VI w[NB][4];
  philox<NB>(s, pe, po, w);
  finish<kind, NB>(w, out, u);
}

// Moves NB blocks' A * c_lo products on by `step`.
template <int NB>
FS_AVX512_INLINE void advance(VI* pe, VI* po, VI step) {
  for (int b = 0; b < NB; ++b) {
    pe[b] = _mm512_add_epi64(pe[b], step);
    po[b] = _mm512_add_epi64(po[b], step);
  }
}

// The kernel contract of stream_kernels.h: values 4 * c0 + [0, nv), no c_lo wrap.
// The update kinds write upd->out (out_v is null).
template <Out kind>
FS_AVX512_FN void run(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, void* out_v,
                      const StreamUpdate* upd = nullptr) {
  const UpdateOperands u = update_operands(upd);
  char* out = upd != nullptr ? reinterpret_cast<char*>(upd->out) : static_cast<char*>(out_v);  // 16 B a counter
  const uint32_t c_hi = static_cast<uint32_t>(c0 >> 32);
  const uint32_t c_lo = static_cast<uint32_t>(c0);
  const Schedule s = make_schedule(k0, k1, c_hi);
  // A * (c_lo + offset of the lane), exact in 64 bits, for even and odd lanes.
  alignas(64) uint64_t ie[8], io[8];
  for (int q = 0; q < 8; ++q) {
    const int le = 2 * q, lo_ = 2 * q + 1;
    ie[q] = uint64_t{kPhiloxRoundA} * static_cast<uint32_t>(4 * (le & 3) + (le >> 2));
    io[q] = uint64_t{kPhiloxRoundA} * static_cast<uint32_t>(4 * (lo_ & 3) + (lo_ >> 2));
  }
  const VI base = _mm512_set1_epi64(static_cast<long long>(uint64_t{kPhiloxRoundA} * c_lo));
  const VI step = _mm512_set1_epi64(static_cast<long long>(uint64_t{kPhiloxRoundA} * kLanes));
  const VI step2 = _mm512_add_epi64(step, step);
  VI pe[2], po[2];
  pe[0] = _mm512_add_epi64(base, _mm512_load_si512(ie));
  po[0] = _mm512_add_epi64(base, _mm512_load_si512(io));
  pe[1] = _mm512_add_epi64(pe[0], step);
  po[1] = _mm512_add_epi64(po[0], step);

  const int64_t nc = nv >> 2;  // whole counters
  int64_t i = 0;               // counters done
  if (nc >= 4 * kLanes) {
    // Software pipeline, 2 blocks per stage: the Philox of group g + 1 shares a basic
    // block with the Box-Muller of group g, so the scheduler interleaves integer and
    // float work and the long div/sqrt chains overlap with independent uops.
    VI w[2][4], wn[2][4];
    philox<2>(s, pe, po, w);
    for (; i + 4 * kLanes <= nc; i += 2 * kLanes) {
      advance<2>(pe, po, step2);
      philox<2>(s, pe, po, wn);
      finish<kind, 2>(w, out + 16 * i, u);
      for (int b = 0; b < 2; ++b)
        for (int k = 0; k < 4; ++k) w[b][k] = wn[b][k];
    }
    finish<kind, 2>(w, out + 16 * i, u);
    advance<2>(pe, po, step2);
    i += 2 * kLanes;
  }
  for (; i + 2 * kLanes <= nc; i += 2 * kLanes) {
    blocks<kind, 2>(s, pe, po, out + 16 * i, u);
    advance<2>(pe, po, step2);
  }
  if (i + kLanes <= nc) {
    blocks<kind, 1>(s, pe, po, out + 16 * i, u);
    pe[0] = pe[1];
    po[0] = po[1];
    i += kLanes;
  }
  const int64_t rest = nv - 4 * i;  // < 4 * kLanes values: one block into a buffer
  if (rest > 0) {
    alignas(64) float buf[4 * kLanes];
    constexpr Out made = kind == Out::kUpdateXY || kind == Out::kUpdateX ? Out::kNormals : kind;
    blocks<made, 1>(s, pe, po, buf, u);  // lanes past the range are computed and dropped
    if (upd != nullptr) {
      update_from(shifted(*upd, 4 * i), buf, rest);
    } else {
      std::memcpy(out + 16 * i, buf, static_cast<size_t>(4 * rest));
    }
  }
}

FS_AVX512_FN void normals_avx512(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, float* out) {
  run<Out::kNormals>(k0, k1, c0, nv, out);
}
FS_AVX512_FN void words_avx512(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, int32_t* out) {
  run<Out::kWords>(k0, k1, c0, nv, out);
}
FS_AVX512_FN void signs_avx512(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, float* out) {
  run<Out::kSigns>(k0, k1, c0, nv, out);
}

FS_AVX512_FN void update_avx512(uint32_t k0, uint32_t k1, uint64_t c0, int64_t nv, const StreamUpdate& u) {
  if (u.y != nullptr) {
    run<Out::kUpdateXY>(k0, k1, c0, nv, nullptr, &u);
  } else {
    run<Out::kUpdateX>(k0, k1, c0, nv, nullptr, &u);
  }
}

// Box-Muller alone (testing): words in the stream_words layout -> normals.
FS_AVX512_FN void box_muller_avx512(const int32_t* words, int64_t nc, float* out) {
  // Deinterleave 16 counters' words with the same lane order as the kernels (the 4x4
  // transpose is its own inverse), transform, and store interleaved.
  int64_t i = 0;
  for (; i < nc; i += kLanes) {
    alignas(64) int32_t in[4 * kLanes];
    alignas(64) float res[4 * kLanes];
    const int64_t m = nc - i < kLanes ? nc - i : kLanes;
    std::memset(in, 0, sizeof in);
    std::memcpy(in, words + 4 * i, static_cast<size_t>(16 * m));
    VF v[4];
    for (int k = 0; k < 4; ++k) v[k] = _mm512_load_ps(reinterpret_cast<const float*>(in) + 16 * k);
    store_interleaved(v[0], v[1], v[2], v[3], res);  // transpose: res holds w0..w3 as 4 vectors
    VI w[4];
    for (int k = 0; k < 4; ++k) w[k] = _mm512_load_si512(res + 16 * k);
    VF n[4];
    box_muller(w[0], w[1], n[0], n[1]);
    box_muller(w[2], w[3], n[2], n[3]);
    store_interleaved(n[0], n[1], n[2], n[3], res);
    std::memcpy(out + 4 * i, res, static_cast<size_t>(16 * m));
  }
}

}  // namespace

Kernels avx512_kernels() {
  return {"avx512", normals_avx512, words_avx512, signs_avx512, update_avx512, box_muller_avx512};
}

}  // namespace stream_detail
}  // namespace fastscore
