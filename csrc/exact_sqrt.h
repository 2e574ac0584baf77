// Correctly rounded float64 square roots of an array, the bits of std::sqrt on every path:
// the corrector's per-row norms (8192 of them at 4096x2, where vsqrtpd's ~1 ns each costs
// about what drawing the noise does). No ATen, so tests/cpu/test_sqrt.cpp builds it alone.
#pragma once
#include <cstdint>

namespace fastscore {

// v[i] = sqrt(v[i]) for i < n, through the path cpu_simd_level() allows.
void sqrt_in_place(double* v, int64_t n);

// The two paths, for the bitwise test: AVX-512F (call only where the CPU has it) and
// portable (vsqrtpd where the compiler vectorises, sqrtsd otherwise).
void sqrt_in_place_avx512(double* v, int64_t n);
void sqrt_in_place_portable(double* v, int64_t n);

}  // namespace fastscore
