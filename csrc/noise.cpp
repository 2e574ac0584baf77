// Noise family, CPU: the ops that expose the stream itself — fill_noise_ (normals or
// Rademacher signs), fill_philox_ (raw Philox words), fill_labels_ (a level index per
// counter), derive_seeds (the step seeds of a run) — on the SIMD generator of
// cpu_stream_simd.h (which every CPU op uses).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "cpu_features.h"
#include "cpu_noise.h"
#include "plain.h"

namespace fastscore {
namespace {

void fill_noise_cpu(at::Tensor out, int64_t dist, const c10::optional<at::Tensor>& seed_t, int64_t seed,
                    const c10::optional<at::Tensor>& offset_t, int64_t offset) {
  TORCH_CHECK(dist == 0 || dist == 1, "fastscore: dist must be 0 (gaussian) or 1 (rademacher)");
  const HostStream s = host_stream(make_stream(seed_t, seed, offset_t, offset, out.device()));
  if (out.numel() == 0) return;
  at::Tensor dst = out.contiguous();
  const int64_t base = s.offset * row_geometry(out).second;
  auto fill = dist == 0 ? stream_normals : stream_signs;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "fill_noise_", [&] {
    scalar_t* d = dst.data_ptr<scalar_t>();
    at::parallel_for(0, dst.numel(), kGrain, [&](int64_t begin, int64_t end) {
      if constexpr (std::is_same_v<scalar_t, float>) {  // straight into the destination
        fill(s.k0, s.k1, static_cast<uint64_t>(base + begin), end - begin, reinterpret_cast<float*>(d) + begin);
      } else {
        alignas(64) float z[kNoiseChunk];
        for (int64_t i = begin; i < end; i += kNoiseChunk) {
          const int64_t count = std::min(kNoiseChunk, end - i);
          fill(s.k0, s.k1, static_cast<uint64_t>(base + i), count, z);
          for (int64_t t = 0; t < count; ++t) d[i + t] = static_cast<scalar_t>(z[t]);
        }
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
    stream_words(s.k0, s.k1, static_cast<uint64_t>(counter + begin), end - begin, d + 4 * begin);
  });
}

// out: int64 [n]; row r gets the level index of word 0 at counter `counter` + r:
// floor(uniform_f32(w0) * n_levels) in float64, at most n_levels - 1 (_common.stream_label).
// The words come from the SIMD generator a chunk at a time; the rest is a few IEEE steps.
void fill_labels_cpu(at::Tensor out, int64_t n_levels, const c10::optional<at::Tensor>& seed_t, int64_t seed,
                     int64_t counter) {
  const HostStream s = host_stream(make_stream(seed_t, seed, c10::nullopt, 0, out.device()));
  TORCH_CHECK(out.dim() == 1 && out.scalar_type() == at::kLong && out.is_contiguous(),
              "fastscore: fill_labels_ wants a contiguous int64 [n] tensor");
  TORCH_CHECK(n_levels >= 1 && n_levels <= (int64_t{1} << 53), "fastscore: n_levels must be in [1, 2**53]");
  constexpr int64_t kRows = 256;  // counters per chunk of words (4 KiB, in L1)
  const double levels = static_cast<double>(n_levels);
  int64_t* d = out.data_ptr<int64_t>();
  at::parallel_for(0, out.size(0), kGrain, [&](int64_t begin, int64_t end) {
    alignas(64) int32_t w[4 * kRows];
    for (int64_t i = begin; i < end; i += kRows) {
      const int64_t count = std::min(kRows, end - i);
      stream_words(s.k0, s.k1, static_cast<uint64_t>(counter + i), count, w);
      for (int64_t t = 0; t < count; ++t) {
        const double v = static_cast<double>(uniform_f32(static_cast<uint32_t>(w[4 * t]))) * levels;
        d[i + t] = std::min(static_cast<int64_t>(v), n_levels - 1);
      }
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
  m.impl("fill_labels_", &fill_labels_cpu);
  m.impl("derive_seeds", &derive_seeds_cpu);
}

FASTSCORE_PLAIN(fill_noise_, fill_noise_cpu, 0);
FASTSCORE_PLAIN(fill_philox_, fill_philox_cpu, 0);
FASTSCORE_PLAIN(fill_labels_, fill_labels_cpu, 0);
FASTSCORE_PLAIN(derive_seeds, derive_seeds_cpu);
FASTSCORE_PLAIN(cpu_kernel, stream_kernel_name);  // which generator the CPU runs (python -m fastscore info)
FASTSCORE_PLAIN(cpu_loops, simd_level_name);     // which build of the element loops runs (with_simd)

}  // namespace fastscore
