"""The noise stream: bit-identical on every backend, N(0, 1), shardable, thread-independent;
seeds and offsets as ints or as tensors read by the kernels; the step seeds of a run."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastscore
from fastscore import ops, reference
from fastscore._common import derive_seed, seed_bits
from support import FAST, SEEDS, assert_bits_equal, seed_as, skip_unsupported

SAMPLE_INPUTS = {  # the registered ops of the family, for tests/test_registration.py
    "fill_noise_": lambda t: [(torch.empty(4, 6, dtype=t.dtype), 0, *t.ints),
                              (torch.empty(4, 6, dtype=t.dtype), 1, *t.tensors)],
    "fill_philox_": lambda t: [(torch.empty(8, 4, dtype=torch.int32), None, 9, 2**33),
                               (torch.empty(8, 4, dtype=torch.int32), torch.tensor(9), 0, 0)],
    "fill_labels_": lambda t: [(torch.empty(8, dtype=torch.int64), 10, None, 9, 2**33),
                               (torch.empty(8, dtype=torch.int64), 3, torch.tensor(9), 0, 0)],
    "derive_seeds": lambda t: [(torch.tensor(11), 7)],
}


def words_as_int32(words) -> torch.Tensor:
    """reference.philox4x32's four int64 tensors in [0, 2**32) -> int32 [n, 4] bit patterns."""
    return torch.stack([(w - ((w >> 31) << 32)).to(torch.int32) for w in words], dim=-1)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("seed", SEEDS + [-1])
def test_philox_words_bitwise(backend, seed):
    # 2**17 counters per seed and range, including counters >= 2**32 and a range that
    # straddles 2**32 (the counter's high word changes mid-launch).
    for first in (0, 2**32 - 3, 2**40 + 12_345):
        n = 2**17
        want = words_as_int32(reference.philox4x32(seed_bits(seed), torch.arange(first, first + n)))
        with fastscore.use_backend(backend):
            got = ops.philox_words(seed, first, n)
        assert torch.equal(got, want), (seed, first)


# Level counts: one level, small ones, NCSN's 232, and large ones where the float64 product
# U * L rounds (U has 24 significant bits, L up to 53): every rounding step is exercised.
LABEL_LEVELS = [1, 2, 3, 10, 232, 2**31 - 1, 3 * 2**40 + 1, 2**53]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("seed", SEEDS)
def test_philox_labels_are_the_float_formula_of_word_0(backend, seed):
    """philox_labels(seed, first, n, L)[r] = floor(uniform_f32(w0) * L) in float64 (at most
    L - 1), w0 word 0 of counter first + r, on 2**16 counters per range (one straddles
    2**32), for every level count above."""
    for first in (0, 2**32 - 3, 2**40 + 12_345):
        n = 2**16
        w0 = reference.philox4x32(seed_bits(seed), torch.arange(first, first + n))[0]
        u = fastscore._common.uniform_f32(w0).double()
        for n_levels in LABEL_LEVELS:
            want = torch.floor(u * n_levels).long().clamp(max=n_levels - 1)
            with fastscore.use_backend(backend):
                got = ops.philox_labels(seed_as(seed, "tensor" if first else "int"), first, n, n_levels)
            assert got.dtype == torch.int64 and torch.equal(got, want), (seed, first, n_levels)
            assert int(got.min()) >= 0 and int(got.max()) < n_levels


def test_philox_labels_are_uniform_and_checked():
    """The labels of 10**5 counters over 10 levels: each count within 5 standard deviations
    of 10**4 (binomial sd 95); bad arguments name themselves."""
    counts = torch.bincount(ops.philox_labels(7, 0, 100_000, 10), minlength=10)
    sd = math.sqrt(100_000 * 0.1 * 0.9)
    assert counts.numel() == 10 and bool(((counts - 10_000).abs() < 5 * sd).all()), counts
    assert ops.philox_labels(7, 0, 0, 10).shape == (0,)
    for bad in (0, -1, 2.5, 2**53 + 1):
        with pytest.raises(ValueError, match="n_levels"):
            ops.philox_labels(7, 0, 4, bad)
    with pytest.raises(ValueError, match="first_counter"):
        ops.philox_labels(7, -1, 4, 10)


def test_philox_known_answer():
    # Random123's published Philox4x32-10 known-answer vector for counter 0, key 0
    # (its other vectors set counter words 2-3, which the stream keeps at 0).
    w = reference.philox4x32(0, torch.tensor([0]))
    assert [int(v) for v in w] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize(
    "shape,offset,seed",
    [((1,), 0, 0), ((7,), 3, 1), ((3, 5), 0, 2**63 + 7), ((2, 4096), 2**33, 2**32 + 5),
     ((5, 3, 7, 9), 11, 2**64 - 1), ((1000, 1000), 1, 12345), ((0, 4), 0, 1), ((), 5, 9), ((4, 0, 3), 2, 3)],
)
def test_normals_bitwise(backend, shape, offset, seed):
    want = reference.noise(shape, seed, offset)
    with fastscore.use_backend(backend):
        got = fastscore.noise(shape, seed, offset)
    assert_bits_equal(got, want, f"{shape} offset={offset} seed={seed}")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("seed_kind", ["int", "tensor"])
@pytest.mark.parametrize("offset_kind", ["int", "tensor"])
def test_tensor_seed_and_offset_give_the_int_bits(backend, seed_kind, offset_kind):
    """A one-element int64 tensor seed/offset (read by the kernel from memory) draws what
    the int draws: seeds >= 2**63 (negative as int64) and offsets whose global index passes
    2**32, at every position of element 0 within its Philox counter."""
    for seed, offset, shape in ((2**63 + 7, 2**33 + 1, (5, 7)), (2**64 - 1, 3, (4, 33)), (12345, 2**31 + 3, (3, 2))):
        want = reference.noise(shape, seed, offset)
        off = offset if offset_kind == "int" else torch.tensor(offset)
        with fastscore.use_backend(backend):
            got = fastscore.noise(shape, seed_as(seed, seed_kind), off)
            signs = ops.probes(shape, seed_as(seed, seed_kind), off)
        assert_bits_equal(got, want, f"seed={seed} offset={offset}")
        assert_bits_equal(signs, reference.rademacher(shape, seed, offset), f"signs seed={seed} offset={offset}")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_noise_dtypes_are_the_fp32_stream_converted(backend, dtype):
    skip_unsupported(backend, dtype)
    with fastscore.use_backend(backend):
        got = fastscore.noise((4, 33), 3, 2, dtype=dtype)
    assert_bits_equal(got, reference.noise((4, 33), 3, 2).to(dtype))


@pytest.mark.parametrize("backend", FAST)
def test_noise_into_non_contiguous_views(backend):
    from fastscore.backends import REGISTRY

    ref = reference.noise((6, 9), 11, 5)
    fill = REGISTRY[backend].plain.fill_noise_
    out = torch.full((9, 6), float("nan")).t()  # shape (6, 9), transposed strides
    fill(out, 0, None, 11, None, 5)
    assert_bits_equal(out, ref, "transposed")
    big = torch.full((6, 18), float("nan"))
    view = big[:, ::2]
    fill(view, 0, None, 11, None, 5)
    assert_bits_equal(view, ref, "strided")
    assert torch.isnan(big[:, 1::2]).all(), "wrote outside the view"


def test_offsets_count_rows_and_shards_equal_one_draw():
    whole = fastscore.noise((10, 3, 5), seed=4)
    parts = [fastscore.noise((n, 3, 5), seed=4, offset=start) for start, n in ((0, 3), (3, 1), (4, 6))]
    assert_bits_equal(torch.cat(parts), whole)


def test_moments_and_ks_against_standard_normal():
    n = 2**21
    z = fastscore.noise((n,), seed=2024).double()
    # Mean, variance, skew and kurtosis of N(0,1) with 5-sigma margins from their
    # sampling standard deviations (1, sqrt 2, sqrt 15, sqrt 96 over sqrt n).
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
    q = fastscore.noise((n, 4), seed=3).double()  # components within a counter are independent too
    r = torch.corrcoef(q.T)
    assert (r - torch.eye(4, dtype=torch.float64)).abs().max().item() < 5 / math.sqrt(n)


def test_probes_are_rademacher_and_shardable():
    v = ops.probes((4000, 50), seed=3)
    assert set(v.unique().tolist()) == {-1.0, 1.0}
    assert abs(v.mean().item()) < 5 / math.sqrt(v.numel())
    assert torch.equal(torch.cat([ops.probes((10, 50), seed=3), ops.probes((5, 50), seed=3, offset=10)]),
                       ops.probes((15, 50), seed=3))
    assert torch.equal(v, reference.rademacher((4000, 50), 3))
    assert torch.equal(ops.probes((3, 4), seed=1, dist="gaussian"), fastscore.noise((3, 4), seed=1))


@pytest.mark.parametrize("backend", ["reference"] + FAST)
def test_derive_seeds_equal_the_integer_function(backend):
    for seed in (0, 7, 2**63 + 11, 2**64 - 1):
        want = [seed_bits(derive_seed(seed, k)) for k in range(1500)]
        with fastscore.use_backend(backend):
            got = ops.derive_seeds(torch.tensor(seed_bits(seed)), 1500)
        assert got.dtype == torch.int64 and got.tolist() == want, seed
        assert ops.derive_seeds(seed, 1500).tolist() == want  # an int seed: the same values
    assert derive_seed(0, 0) == 0xE220A8397B1DCDAF  # SplitMix64's first output from state 0


@pytest.mark.parametrize("backend", FAST)
def test_derived_step_seeds_as_tensor_views_match_int_seeds(backend):
    """What a sampler does: derive the step seeds once, pass views of them."""
    steps = ops.derive_seeds(torch.tensor(5), 6)
    with fastscore.use_backend(backend):
        for k, s in enumerate(steps.unbind()):
            assert_bits_equal(fastscore.noise((3, 5), s, 2), reference.noise((3, 5), derive_seed(5, k), 2))


@pytest.mark.skipif("triton" not in FAST, reason="triton interpreter unavailable")
def test_triton_reads_the_seed_from_the_tensor_at_each_launch():
    """The same launch with the same seed tensor, refilled between launches, draws the new
    seed's noise: the seed is loaded by the kernel, not baked into the launch."""
    from fastscore.kernels.noise import fill_noise_

    seed, offset = torch.tensor(3), torch.tensor(2)
    out = torch.empty(4, 9)
    for s, o in ((3, 2), (2**62 + 1, 7), (-5, 0)):
        seed.fill_(s)
        offset.fill_(o)
        fill_noise_(out, 0, seed, 0, offset, 0)
        assert_bits_equal(out, reference.noise(out.shape, s, o), f"seed {s}")


@pytest.mark.skipif("cpp" not in FAST, reason="fastscore._C not built")
def test_same_bits_for_1_2_3_threads():
    code = (
        "import torch, fastscore, sys\n"
        "torch.set_num_threads(int(sys.argv[1]))\n"
        "x = torch.linspace(-1, 1, 3 * 70001).reshape(3, 70001)\n"
        "z = fastscore.noise((3, 70001), seed=99, offset=5)\n"
        "fastscore.langevin_step_(x, x.clone(), 0.01, seed=7)\n"
        "c = x.clone(); fastscore.ops.langevin_corrector_(c, x, 0.16, seed=3)\n"
        "sys.stdout.write(str(hash(z.numpy().tobytes())) + ' ' + str(hash(x.numpy().tobytes())) + ' '"
        " + str(hash(c.numpy().tobytes())))\n"
    )
    outs = {subprocess.run([sys.executable, "-c", code, str(t)], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "0", **__import__("os").environ}).stdout
            for t in (1, 2, 3)}
    assert len(outs) == 1, outs


# --------------------------------------------------------------------------- Triton helpers on edge inputs


try:
    import triton
    import triton.language as tl

    from fastscore.kernels.noise import U_MIN, log_f32, sincos_2pi_f32, uniform_f32

    @triton.jit
    def _helpers_kernel(w_ptr, u_ptr, log_ptr, sin_ptr, cos_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        w = tl.load(w_ptr + offs, mask=mask, other=0).to(tl.uint32, bitcast=True)
        u = uniform_f32(w)
        tl.store(u_ptr + offs, u, mask=mask)
        tl.store(log_ptr + offs, log_f32(tl.where(u < U_MIN, U_MIN, u)), mask=mask)
        s, c = sincos_2pi_f32(u)
        tl.store(sin_ptr + offs, s, mask=mask)
        tl.store(cos_ptr + offs, c, mask=mask)
except ImportError:  # the test below is skipped
    pass


@pytest.mark.skipif("triton" not in FAST, reason="triton interpreter unavailable")
def test_triton_helpers_match_reference_on_edge_words():
    g = torch.Generator().manual_seed(1)
    rand = torch.randint(0, 2**32, (1 << 18,), generator=g, dtype=torch.int64)
    # Words whose int32 view lands near k * 2**29: u = k/4 exactly for some of them
    # (u = 1/4, 1/2 make cos, sin exactly -0 in the reference), on both sign paths.
    near = torch.cat([torch.arange(k * 2**29 - 300, k * 2**29 + 300) for k in range(1, 4)])
    special = torch.tensor([0, 1, 2, 2**31 - 1, 2**31, 2**32 - 1, 2**32 - 2, 2**23, 2**24 + 1], dtype=torch.int64)
    w = torch.cat([rand, near, 2**32 - 1 - near, special])
    u_ref = reference.uniform_f32(w)
    quarter = u_ref * 4 == torch.round(u_ref * 4)
    assert {0.0, 0.25, 0.5, 0.75} <= set(u_ref[quarter].tolist()), "edge words do not reach the quadrant points"
    n = w.numel()
    u, lg, sn, cs = (torch.empty(n) for _ in range(4))
    block = 1 << 16
    _helpers_kernel[(triton.cdiv(n, block),)](words_as_int32([w]).reshape(-1), u, lg, sn, cs, n, BLOCK=block,
                                              enable_fp_fusion=False)
    assert_bits_equal(u, u_ref, "uniform_f32")
    assert_bits_equal(lg, reference.log_f32(torch.clamp(u_ref, min=reference.U_MIN)), "log_f32")
    sin_ref, cos_ref = reference.sincos_2pi_f32(u_ref)
    assert_bits_equal(sn, sin_ref, "sin 2 pi u")
    assert_bits_equal(cs, cos_ref, "cos 2 pi u")
    minus_zero = torch.iinfo(torch.int32).min  # the signed zeros really are exercised
    assert (sin_ref.view(torch.int32) == minus_zero).any() and (cos_ref.view(torch.int32) == minus_zero).any()
