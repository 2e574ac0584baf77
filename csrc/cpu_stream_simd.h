// fastscore's noise stream on the CPU: explicit AVX-512 / AVX2 kernels, chosen once at
// run time from the CPU's features, with philox.h as the definition and fallback.
//
// The stream (see philox.h and fastscore/reference.py): element j (a uint64 global
// index) under key (k0, k1) = (low, high 32 bits of the seed) is component j & 3 of the
// four float32 normals made from the Philox4x32-10 words at counter c = j >> 2, counter
// words (c_lo, c_hi, 0, 0) = (c & 0xFFFFFFFF, c >> 32, 0, 0); n0, n1 come from Box-Muller
// on (w0, w1) and n2, n3 on (w2, w3). Every function below returns exactly those bits,
// whichever kernel runs, however a range is split into calls, and at any alignment of j0
// or out. Element indices are taken modulo 2^64 (so the counter j >> 2 wraps from
// 2^62 - 1 to 0); stream_words' counter is taken modulo 2^64; c_lo carries into c_hi.
//
// Cost model for fused ops: a call costs about one vector block (~70 ns with AVX-512)
// plus the per-value rate (~0.85 ns per normal with AVX-512, ~1.5 ns with AVX2): one
// indirect call, one block computed into a stack buffer when j0 & 3 != 0, and one when
// the count is not a multiple of the block (16 counters = 64 values for AVX-512, 8 = 32
// for AVX2). Chunks of 256-2048 normals into an L1-resident buffer therefore run at
// close to the full rate; keep chunk lengths multiples of 64 where the op allows it.
// An op that only combines the noise with x and one more tensor does better with
// stream_update: its loads overlap the generation instead of following each chunk.
//
// All functions are thread-safe and reentrant (the dispatch is a function-local static).
#pragma once
#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace fastscore {

// out[t] = stream element j0 + t for t in [0, n): float32 normals.
void stream_normals(uint32_t k0, uint32_t k1, uint64_t j0, int64_t n, float* out);

// Philox4x32-10 words of counters c0 .. c0 + n - 1 as int32 bit patterns:
// out[4*i + k] = word k of counter c0 + i (4*n values).
void stream_words(uint32_t k0, uint32_t k1, uint64_t c0, int64_t n, int32_t* out);

// Rademacher probes laid out like stream_normals: out[t] for element j = j0 + t is
// +1.0f, or -1.0f where bit 31 of word (j & 3) at counter j >> 2 is set.
void stream_signs(uint32_t k0, uint32_t k1, uint64_t j0, int64_t n, float* out);

// The stream consumed inside the generator: out[t] = ((a * x[t]) + b * y[t]) + c * z[t],
// or (a * x[t]) + c * z[t] where y is null, z[t] the stream - the update ops' float32
// arithmetic (step.cpp: each product and sum rounded, no fma) for one- and two-tensor
// steps. out may be x or y: every element is read before it is written.
struct StreamUpdate {
  float* out;
  const float* x;
  const float* y;  // null: no b term
  float a, b, c;
};

// u's update for t in [0, n) with z[t] = stream element j0 + t: the bits of stream_normals
// followed by that loop, without the buffer. The SIMD kernels load x and y while they
// generate, so a fused op's memory traffic overlaps the generator's arithmetic instead of
// following each buffered chunk (the ops took 1.02-1.18x the generator's time with it,
// 1.18-1.62x with the chunks; README, session 12). A call costs a vector block more, as above.
void stream_update(uint32_t k0, uint32_t k1, uint64_t j0, int64_t n, const StreamUpdate& u);

// Whether 1.0f * x rounds to x for every float x in this thread's floating-point mode:
// always, except under flush-to-zero without denormals-are-zero (MXCSR), which flushes a
// denormal product that an add would otherwise see. Where it holds, stream_update with
// a = 1 gives x[t] + c * z[t] exactly (the kernels then skip the product).
inline bool unit_product_exact() {
#if defined(__x86_64__) || defined(_M_X64)
  constexpr unsigned kFlushToZero = 0x8000, kDenormalsAreZero = 0x40;
  return (_mm_getcsr() & (kFlushToZero | kDenormalsAreZero)) != kFlushToZero;
#else
  return true;  // a flush-to-zero mode here flushes inputs too: 1 * x and x + p agree
#endif
}

// Which kernel the dispatcher chose: "avx512", "avx2" or "scalar". The choice is made on
// first use from __builtin_cpu_supports; the environment variable FASTSCORE_CPU_KERNEL
// (= avx512 | avx2 | scalar) can lower it (never raise it above what the CPU has).
const char* stream_kernel_name();

}  // namespace fastscore
