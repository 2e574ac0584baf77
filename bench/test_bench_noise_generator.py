"""The C++ noise generator alone: fastscore._C.fill_noise_ (Philox4x32-10 +
fastscore's bit-exact Box-Muller) filling 2**22 fp32 normals, with 1 and 2 intra-op
threads, beside torch.randn into the same preallocated buffer (``out=``, so neither row
pays for a 16 MiB allocation). The summary reports normals/s per core."""

from __future__ import annotations

import pytest
import torch

from fastscore import backends

N = 2**22
SEED = 1234
THREAD_COUNTS = (1, 2)


@pytest.mark.parametrize("provider", ("cpp", "eager"))
@pytest.mark.parametrize("threads", THREAD_COUNTS)
def test_noise_generator(benchmark, run_timed, threads, provider):
    if provider == "cpp" and not backends.HAS_EXTENSION:
        pytest.skip(f"fastscore._C is not built ({backends.EXTENSION_ERROR})")
    out = torch.empty(N, dtype=torch.float32)
    if provider == "cpp":
        fill = backends._C.fill_noise_

        def fn():
            fill(out, 0, None, SEED, None, 0)

        impl = "fastscore._C.fill_noise_ (the plain door)"
    else:
        def fn():
            torch.randn(N, out=out)

        impl = "torch.randn(2**22, out=buf)"
    benchmark.group = f"noise generator 2**22 {threads}t"
    benchmark.extra_info.update(
        suite="generator", op="generator", size=f"2**22 {threads}t", provider=provider, impl=impl,
        numel=N, bytes=4 * N, normals=N, threads=threads, dtype="float32",
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run_timed(fn)
    finally:
        torch.set_num_threads(previous)
