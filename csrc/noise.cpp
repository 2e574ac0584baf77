// Noise family, CPU: the tile generators every CPU op uses, and the ops that expose the
// stream itself: fill_noise_ (normals or Rademacher signs), fill_philox_ (raw Philox
// words) and derive_seeds (the step seeds of a run).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_noise.h"
#include "plain.h"

namespace fastscore {

// One SoA pass per component keeps every lane independent so GCC vectorises the
// whole Philox + Box-Muller body; the interleave afterwards is a cheap shuffle.
__attribute__((target_clones("avx512f", "avx2", "default")))
void normals_tile(uint32_t k0, uint32_t k1, uint64_t counter, float* out) {
  alignas(64) float n0[kTileCounters], n1[kTileCounters], n2[kTileCounters], n3[kTileCounters];
  const uint32_t lo = static_cast<uint32_t>(counter);
  const uint32_t hi = static_cast<uint32_t>(counter >> 32);
  for (int i = 0; i < kTileCounters; ++i) {
    const uint32_t c_lo = lo + static_cast<uint32_t>(i);
    const uint32_t c_hi = hi + (c_lo < lo ? 1u : 0u);  // carry into the high word
    float n[4];
    normals4(c_lo, c_hi, k0, k1, n);
    n0[i] = n[0];
    n1[i] = n[1];
    n2[i] = n[2];
    n3[i] = n[3];
  }
  for (int i = 0; i < kTileCounters; ++i) {
    out[4 * i] = n0[i];
    out[4 * i + 1] = n1[i];
    out[4 * i + 2] = n2[i];
    out[4 * i + 3] = n3[i];
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void signs_tile(uint32_t k0, uint32_t k1, uint64_t counter, float* out) {
  const uint32_t lo = static_cast<uint32_t>(counter);
  const uint32_t hi = static_cast<uint32_t>(counter >> 32);
  for (int i = 0; i < kTileCounters; ++i) {
    const uint32_t c_lo = lo + static_cast<uint32_t>(i);
    const PhiloxWords w = philox4x32_10(c_lo, hi + (c_lo < lo ? 1u : 0u), k0, k1);
    out[4 * i] = rademacher_of_word(w.w0);
    out[4 * i + 1] = rademacher_of_word(w.w1);
    out[4 * i + 2] = rademacher_of_word(w.w2);
    out[4 * i + 3] = rademacher_of_word(w.w3);
  }
}

namespace {

void fill_noise_cpu(at::Tensor out, int64_t dist, const c10::optional<at::Tensor>& seed_t, int64_t seed,
                    const c10::optional<at::Tensor>& offset_t, int64_t offset) {
  TORCH_CHECK(dist == 0 || dist == 1, "fastscore: dist must be 0 (gaussian) or 1 (rademacher)");
  const HostStream s = host_stream(make_stream(seed_t, seed, offset_t, offset, out.device()));
  if (out.numel() == 0) return;
  at::Tensor dst = out.contiguous();
  const int64_t base = s.offset * row_geometry(out).second;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "fill_noise_", [&] {
    scalar_t* d = dst.data_ptr<scalar_t>();
    at::parallel_for(0, dst.numel(), kGrain, [&](int64_t begin, int64_t end) {
      if (dist == 0) {
        for_each_noise_tile(s, base, begin, end, [&](int64_t i, int64_t count, const float* z) {
          for (int64_t t = 0; t < count; ++t) d[i + t] = static_cast<scalar_t>(z[t]);
        });
        return;
      }
      alignas(64) float tile[kTileNormals];
      for (int64_t i = begin; i < end;) {
        const int64_t j = base + i;
        const int64_t counter = (j >> 2) & ~(kTileCounters - 1);
        signs_tile(s.k0, s.k1, static_cast<uint64_t>(counter), tile);
        const int64_t first = j - 4 * counter, count = std::min<int64_t>(end - i, kTileNormals - first);
        for (int64_t t = 0; t < count; ++t) d[i + t] = static_cast<scalar_t>(tile[first + t]);
        i += count;
      }
    });
  });
  if (!dst.is_same(out)) out.copy_(dst);
}

// out: int32 [n, 4]; row r gets the words of counter `counter` + r.
void fill_philox_cpu(at::Tensor out, const c10::optional<at::Tensor>& seed_t, int64_t seed, int64_t counter) {
  const HostStream s = host_stream(make_stream(seed_t, seed, c10::nullopt, 0, out.device()));
  TORCH_CHECK(out.dim() == 2 && out.size(1) == 4 && out.scalar_type() == at::kInt && out.is_contiguous(),
              "fastscore: fill_philox_ wants a contiguous int32 [n, 4] tensor");
  int32_t* d = out.data_ptr<int32_t>();
  at::parallel_for(0, out.size(0), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const uint64_t c = static_cast<uint64_t>(counter + r);
      const PhiloxWords w = philox4x32_10(static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), s.k0, s.k1);
      d[4 * r] = static_cast<int32_t>(w.w0);
      d[4 * r + 1] = static_cast<int32_t>(w.w1);
      d[4 * r + 2] = static_cast<int32_t>(w.w2);
      d[4 * r + 3] = static_cast<int32_t>(w.w3);
    }
  });
}

at::Tensor derive_seeds_cpu(const at::Tensor& seed, int64_t n) {
  TORCH_CHECK(n >= 0, "fastscore: n must be >= 0");
  const uint64_t s = static_cast<uint64_t>(kernel_int(seed, 0, seed.device(), "seed").get());
  at::Tensor out = at::empty({n}, seed.options().dtype(at::kLong));
  int64_t* d = out.data_ptr<int64_t>();
  for (int64_t k = 0; k < n; ++k) d[k] = static_cast<int64_t>(derive_seed(s, static_cast<uint64_t>(k)));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastscore, CPU, m) {
  m.impl("fill_noise_", &fill_noise_cpu);
  m.impl("fill_philox_", &fill_philox_cpu);
  m.impl("derive_seeds", &derive_seeds_cpu);
}

FASTSCORE_PLAIN(fill_noise_, fill_noise_cpu, 0);
FASTSCORE_PLAIN(fill_philox_, fill_philox_cpu, 0);
FASTSCORE_PLAIN(derive_seeds, derive_seeds_cpu);

}  // namespace fastscore
