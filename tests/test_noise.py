"""The noise stream: bit-identical on every backend, N(0, 1), shardable, thread-independent."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastscore
from fastscore import ops, reference
from fastscore.backends import available_backends

FAST = [b for b in available_backends("cpu") if b != "reference"]
SEEDS = [0, 1, 2**32 + 5, 2**63 + 7, 2**64 - 1]


def as_bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def assert_bitwise(got: torch.Tensor, want: torch.Tensor):
    diff = (as_bits(got) != as_bits(want)).reshape(-1).nonzero().reshape(-1)
    assert diff.numel() == 0, f"{diff.numel()} elements differ, first at {diff[:5].tolist()}: " \
        f"{got.reshape(-1)[diff[:5]].tolist()} vs {want.reshape(-1)[diff[:5]].tolist()}"


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("seed", SEEDS)
def test_philox_words_bitwise(backend, seed):
    # 2**18 counters per seed and first-counter pair: > 10**6 words per backend overall.
    for first in (0, 2**32 - 3):
        n = 2**17
        counters = torch.arange(first, first + n, dtype=torch.int64)
        want = torch.stack(reference.philox4x32(seed, counters), dim=1)
        want = (want - ((want >> 31) << 32)).to(torch.int32)
        with fastscore.use_backend(backend):
            got = ops.philox_words(seed, first, n)
        assert torch.equal(got, want)


def test_philox_known_answer():
    # Random123's published Philox4x32-10 known-answer vector for counter 0, key 0
    # (its other vectors set counter words 2-3, which the stream keeps at 0).
    w = reference.philox4x32(0, torch.tensor([0]))
    assert [int(v) for v in w] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize(
    "shape,offset,seed",
    [((1,), 0, 0), ((7,), 3, 1), ((3, 5), 0, 2**63 + 7), ((2, 4096), 2**33, 2**32 + 5),
     ((5, 3, 7, 9), 11, 2**64 - 1), ((1000, 1000), 1, 12345), ((0, 4), 0, 1), ((), 5, 9)],
)
def test_normals_bitwise(backend, shape, offset, seed):
    want = reference.noise(shape, seed, offset)
    with fastscore.use_backend(backend):
        got = fastscore.noise(shape, seed, offset)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert_bitwise(got, want)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_noise_dtypes_are_the_fp32_stream_converted(backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bf16 arithmetic")
    with fastscore.use_backend(backend):
        got = fastscore.noise((4, 33), 3, 2, dtype=dtype)
    assert got.dtype == dtype
    assert torch.equal(got, reference.noise((4, 33), 3, 2).to(dtype))


def test_offsets_count_rows_and_shards_equal_one_draw():
    whole = fastscore.noise((10, 3, 5), seed=4)
    parts = [fastscore.noise((n, 3, 5), seed=4, offset=start) for start, n in ((0, 3), (3, 1), (4, 6))]
    assert_bitwise(torch.cat(parts), whole)


def test_moments_and_ks_against_standard_normal():
    n = 2**21
    z = fastscore.noise((n,), seed=2024).double()
    # Mean, variance, skew and kurtosis of N(0,1) with 5-sigma margins from their
    # sampling standard deviations (1, sqrt 2, sqrt 6, sqrt 96 over sqrt n).
    se = 1 / math.sqrt(n)
    assert abs(z.mean().item()) < 5 * se
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2) * se
    assert abs((z**3).mean().item()) < 5 * math.sqrt(15) * se
    assert abs((z**4).mean().item() - 3) < 5 * math.sqrt(96) * se
    # Kolmogorov-Smirnov: the 0.1% critical value of sqrt(n) * D is 1.95.
    zs = np.sort(z.numpy())
    cdf = 0.5 * (1 + torch.special.erf(torch.from_numpy(zs) / math.sqrt(2))).numpy()
    i = np.arange(1, n + 1)
    d = max(np.max(i / n - cdf), np.max(cdf - (i - 1) / n))
    assert math.sqrt(n) * d < 1.95


def test_distinct_seeds_and_offsets_uncorrelated():
    n = 2**18
    a = fastscore.noise((n,), seed=1).double()
    b = fastscore.noise((n,), seed=2).double()
    c = fastscore.noise((n,), seed=1, offset=n).double()
    d = fastscore.noise((n,), seed=2**32 + 1).double()  # differs from seed 1 only in the high key word
    for other in (b, c, d):
        r = torch.corrcoef(torch.stack([a, other]))[0, 1].item()
        assert abs(r) < 5 / math.sqrt(n)  # sd of r under independence is 1/sqrt(n)
    # Components within a counter are independent too.
    q = fastscore.noise((n, 4), seed=3).double()
    r = torch.corrcoef(q.T)
    assert (r - torch.eye(4, dtype=torch.float64)).abs().max().item() < 5 / math.sqrt(n)


@pytest.mark.skipif("cpp" not in FAST, reason="fastscore._C not built")
def test_same_bits_for_1_2_3_threads():
    code = (
        "import torch, fastscore, sys\n"
        "torch.set_num_threads(int(sys.argv[1]))\n"
        "x = torch.linspace(-1, 1, 3 * 70001).reshape(3, 70001)\n"
        "z = fastscore.noise((3, 70001), seed=99, offset=5)\n"
        "fastscore.langevin_step_(x, x.clone(), 0.01, seed=7)\n"
        "sys.stdout.write(str(hash(z.numpy().tobytes())) + ' ' + str(hash(x.numpy().tobytes())))\n"
    )
    outs = {subprocess.run([sys.executable, "-c", code, str(t)], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "0", **__import__("os").environ}).stdout
            for t in (1, 2, 3)}
    assert len(outs) == 1, outs
