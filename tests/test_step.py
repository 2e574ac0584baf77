"""The update family — step_, langevin_step_, update, perturb, combine — on every backend
against the reference, elementwise and bit for bit: the fused update is evaluated in the
same order everywhere (fp32 math, fp64 for fp64), for every storage dtype, layout and
coefficient kind (floats, 0-d tensors, per-sample tensors, strided table views)."""

import math

import pytest
import torch

import fastscore
from fastscore import ops, reference
from support import COEF_KINDS, DTYPES, FAST, assert_bits_equal, coef_values, make, run_both, seed_as, skip_unsupported

SAMPLE_INPUTS = {  # the registered ops of the family, for tests/test_registration.py
    "step_": lambda t: [
        (t.x.clone(), None, [t.s], [1.0, 0.1, 0.2], [], [], None, *t.ints),
        (t.x.clone(), torch.empty_like(t.x), [t.s], [1.0, 0.0, 0.2, 1.0, 0.0, 0.0], [t.per, t.per], [1, 4], None,
         *t.tensors),
        (t.x.clone(), None, [], [0.5, 0.0], [t.scalar], [1], t.noise, *t.ints),
        (t.x.clone(), None, [t.s, t.y, t.s, t.y], [1.0, 0.1, 0.2, 0.3, 0.4, 0.0], [], [], None, *t.ints),
    ],
    "update_": lambda t: [
        (torch.empty_like(t.x), None, t.x, [t.s], [0.9, 0.1, 0.2], [t.per], [0], None, *t.tensors),
        (torch.empty_like(t.x), torch.empty_like(t.x), t.x, [t.s, t.y], [1.0] * 8, [], [], t.noise, *t.ints),
    ],
    "lincomb": lambda t: [
        (t.x.clone().requires_grad_(t.grad), [], [0.0, 0.3], [t.per.clone().requires_grad_(t.grad)], [0], None,
         *t.ints),
        (t.x.clone(), [t.s.clone().requires_grad_(t.grad)], [1.0, 0.5, 0.2], [], [], t.noise, *t.tensors),
    ],
}

SHAPES = [(0, 5), (1,), (7,), (3, 5), (2, 4096), (400, 3), (4, 3, 9, 11), (5, 1, 1)]  # (400, 3): chunks split rows


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("coef_kind", COEF_KINDS)
def test_step_matches_reference(backend, dtype, shape, layout, coef_kind):
    skip_unsupported(backend, dtype)
    a, b, c = coef_values(coef_kind, shape[0])

    def run():
        x = make(shape, dtype, layout, 0)
        s = make(shape, dtype, layout, 1)
        mean = torch.empty_like(x)
        ops.step_(x, s, a, b, c, seed=2**40 + 3, offset=6, x_mean=mean)
        return torch.stack([x, mean]) if x.numel() else x

    got, want = run_both(backend, run)
    assert_bits_equal(got, want)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["no_score", "ode_c0", "explicit_noise", "tensor_seed", "zero_dim",
                                     "strided_mean"])
def test_step_variants_match_reference(backend, dtype, variant):
    skip_unsupported(backend, dtype)
    shape = () if variant == "zero_dim" else (6, 37)

    def run():
        x = make(shape, dtype, "contiguous", 2)
        s = make(shape, dtype, "contiguous", 3)
        if variant == "no_score":
            ops.step_(x, None, 0.5, 0.0, 1.5, seed=1)
        elif variant == "ode_c0":
            ops.step_(x, s, 1.0, -0.25, 0.0, seed=1)
        elif variant == "explicit_noise":
            ops.step_(x, s, 1.0, 0.1, 0.3, noise=make(shape, torch.float32, "contiguous", 4))
        elif variant == "tensor_seed":
            ops.step_(x, s, 1.0, 0.1, 0.3, seed=torch.tensor(77), offset=torch.tensor(2))
        elif variant == "strided_mean":
            mean = make(shape, dtype, "strided", 5)
            ops.step_(x, s, 0.9, torch.rand(6, generator=torch.Generator().manual_seed(0)), 0.3, seed=4, x_mean=mean)
            return torch.stack([x, mean])
        else:
            ops.step_(x, s, 1.0, 0.1, 0.3, seed=5, offset=3)
        return x

    got, want = run_both(backend, run)
    assert_bits_equal(got, want)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("seed_kind", ["int", "tensor"])
def test_int_and_tensor_seeds_give_the_same_bits(backend, seed_kind):
    x0, s = make((5, 33), torch.float32, "contiguous", 6), make((5, 33), torch.float32, "contiguous", 7)
    for seed, offset in ((2**63 + 9, 2**32 + 7), (2**64 - 1, 1), (3, 0)):
        off = offset if seed_kind == "int" else torch.tensor(offset)

        def run():
            x = x0.clone()
            ops.step_(x, s, 0.9, 0.05, 0.2, seed=seed_as(seed, seed_kind), offset=off)
            y = ops.update(x0, s, 0.7, 0.1, 0.3, seed=seed_as(seed, seed_kind), offset=off)
            z = ops.perturb(x0, 0.4, seed=seed_as(seed, seed_kind), offset=off)
            return torch.stack([x, y, z])

        got, want = run_both(backend, run)
        assert_bits_equal(got, want, f"seed {seed} offset {offset}")
        with fastscore.use_backend(backend):
            x = x0.clone()
            ops.step_(x, s, 0.9, 0.05, 0.2, seed=seed, offset=offset)
        assert_bits_equal(x, want[0], "int seed = tensor seed")


# float32 steps of x and at most one more tensor into one output take the generator's fused
# update (csrc/cpu_stream_simd.h, stream_update) on the cpp backend: a call per range of
# constant coefficients, so per-sample rows of >= 1024 elements are one call each. Shapes
# where that call starts inside a counter (odd rows, offsets; 16411 splits between two
# threads at an element that is not a multiple of 4), ends inside a vector block, or rows
# are short (the chunked path), every op that takes it, both coefficient kinds.
@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", [(3, 1029), (5, 2051), (1, 16411), (3000, 7)], ids=str)
@pytest.mark.parametrize("coef_kind", ["float", "per_sample"])
def test_fused_stream_update_matches_reference(backend, shape, coef_kind):
    a, b, c = coef_values(coef_kind, shape[0])
    eps = c if coef_kind == "per_sample" else 0.0123

    def run():
        x0, s = make(shape, torch.float32, "contiguous", 8), make(shape, torch.float32, "contiguous", 9)
        x, lx = x0.clone(), x0.clone()
        ops.step_(x, s, a, b, c, seed=2**63 + 5, offset=3)
        ops.langevin_step_(lx, s, eps, seed=6, offset=1)
        y = ops.update(x0, s, a, b, c, seed=2**64 - 1, offset=2**32 - 1)
        p = ops.perturb(x0, c, seed=7, offset=5, mean_scale=a)
        return torch.stack([x, lx, y, p])

    got, want = run_both(backend, run)
    assert_bits_equal(got, want)


def test_c_zero_draws_no_noise():
    x = torch.randn(4, 8)
    s = torch.randn(4, 8)
    y = x.clone()
    ops.step_(y, s, 1.0, 0.5, 0.0, seed=3)
    assert torch.equal(y, x + 0.5 * s)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("coef_kind", ["float", "per_sample"])
def test_langevin_step_matches_reference_and_definition(backend, dtype, coef_kind):
    skip_unsupported(backend, dtype)
    eps = 0.003 if coef_kind == "float" else torch.tensor([0.001, 0.002, 0.0, 0.004])

    def run():
        x = make((4, 3, 5), dtype, "transposed", 5)
        ops.langevin_step_(x, make((4, 3, 5), dtype, "transposed", 6), eps, seed=8, offset=1)
        return x

    got, want = run_both(backend, run)
    assert_bits_equal(got, want)
    if dtype == torch.float32:  # and the definition x + eps*s + sqrt(2 eps)*z (float64 check)
        x0, s0 = make((4, 3, 5), dtype, "transposed", 5), make((4, 3, 5), dtype, "transposed", 6)
        e = torch.as_tensor(eps, dtype=torch.float64).reshape(-1, 1, 1)
        z = reference.noise((4, 3, 5), 8, 1).double()
        assert torch.allclose(got.double(), x0.double() + e * s0.double() + torch.sqrt(2 * e) * z, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 3), (1,), (9, 5), (3, 4, 5), ()], ids=str)
@pytest.mark.parametrize("coef_kind", COEF_KINDS)
def test_perturb_matches_reference(backend, dtype, shape, coef_kind):
    skip_unsupported(backend, dtype)
    if shape == () and coef_kind in ("per_sample", "table"):
        pytest.skip("a 0-d x has no per-sample coefficients")
    a, _, c = coef_values(coef_kind, shape[0] if shape else 1)
    c = c.abs() if isinstance(c, torch.Tensor) else abs(c)
    got, want = run_both(backend, lambda: ops.perturb(make(shape, dtype, "transposed", 7), c, seed=11, offset=2,
                                                      mean_scale=a))
    assert_bits_equal(got, want)


def test_perturb_uses_the_stream_and_mean_scale():
    x = torch.randn(5, 6)
    out = ops.perturb(x, 0.5, seed=4, offset=3, mean_scale=0.8)
    z = reference.noise((5, 6), 4, 3)
    assert torch.allclose(out, 0.8 * x + 0.5 * z, rtol=1e-6, atol=1e-6)
    assert torch.equal(z, reference.noise((8, 6), 4, 0)[3:])  # offset counts rows


@pytest.mark.parametrize("backend", FAST)
def test_perturb_gradients_match_reference(backend):
    def run():
        x = torch.randn(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
        sigma = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64, requires_grad=True)
        scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
        out = ops.perturb(x, sigma, seed=3, mean_scale=scale)
        (out * torch.arange(28, dtype=torch.float64).reshape(4, 7)).sum().backward()
        return torch.cat([out.detach().reshape(-1), x.grad.reshape(-1), sigma.grad, scale.grad.reshape(1)])

    got, want = run_both(backend, run)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    z = reference.noise((4, 7), 3, 0).double()
    w = torch.arange(28, dtype=torch.float64).reshape(4, 7)
    assert torch.allclose(want[28 + 28:28 + 28 + 4], (w * z).sum(1))  # d/dsigma = row sums of g * z


@pytest.mark.parametrize("backend", FAST)
def test_perturb_gradcheck(backend):
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    sigma = torch.rand(3, dtype=torch.float64, requires_grad=True)
    with fastscore.use_backend(backend):
        assert torch.autograd.gradcheck(lambda a, b: ops.perturb(a, b, seed=2, mean_scale=0.9), (x, sigma))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 5), (1,), (3, 5), (2, 4096), (4, 3, 9, 11)], ids=str)
@pytest.mark.parametrize("coef_kind", ["float", "per_sample"])
@pytest.mark.parametrize("variant", ["drift", "noisy", "out_given"])
def test_update_matches_reference_and_leaves_x(backend, dtype, shape, coef_kind, variant):
    skip_unsupported(backend, dtype)
    a, b, c = coef_values(coef_kind, shape[0])
    c = 0.0 if variant == "drift" else c

    def run():
        x = make(shape, dtype, "transposed", 8)
        s = make(shape, dtype, "transposed", 9)
        x0 = x.clone()
        out = make(shape, dtype, "transposed", 10) if variant == "out_given" else None
        got = ops.update(x, s, a, b, c, seed=21, offset=4, out=out)
        assert torch.equal(x, x0) and (out is None or got is out)
        return got

    got, want = run_both(backend, run)
    assert_bits_equal(got, want)


# --------------------------------------------------------------------------- combine: the general form


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_ys", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("coef_kind", COEF_KINDS)
@pytest.mark.parametrize("second", ["none", "mean", "noisy"])
def test_combine_matches_reference(backend, dtype, n_ys, coef_kind, second):
    skip_unsupported(backend, dtype)
    shape = (5, 3, 7)
    coefs = coef_values(coef_kind, 5, [1.0 - 0.1 * k for k in range(n_ys + 2)])
    coefs2 = coef_values(coef_kind, 5, [0.3 + 0.05 * k for k in range(n_ys + 2)])
    if second == "mean":
        coefs2 = coefs2[:-1] + (0.0,)

    def run():
        x = make(shape, dtype, "transposed", 11)
        ys = [make(shape, dtype, "contiguous", 20 + k) for k in range(n_ys)]
        out2 = torch.empty_like(x) if second != "none" else None
        out = ops.combine(x, ys, coefs, seed=2**63 + 1, offset=3, out2=out2,
                          coefs2=coefs2 if second != "none" else None)
        return torch.stack([out, out2]) if out2 is not None else out

    got, want = run_both(backend, run)
    assert_bits_equal(got, want)


def test_combine_is_the_written_formula_and_in_place():
    g = torch.Generator().manual_seed(3)
    x, y0, y1, y2, y3 = (torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in range(5))
    z = reference.noise((4, 6), 9, 2).double()
    coefs = [0.5, torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64), -0.25, 0.125, 2.0, 0.75]
    out2 = torch.empty_like(x)
    got = ops.combine(x, [y0, y1, y2, y3], coefs, seed=9, offset=2, out2=out2, coefs2=[1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    want = 0.5 * x + coefs[1][:, None] * y0 - 0.25 * y1 + 0.125 * y2 + 2.0 * y3 + 0.75 * z
    assert torch.allclose(got, want, rtol=1e-14, atol=1e-14)
    assert torch.allclose(out2, x + y0, rtol=1e-14, atol=1e-14)
    x_before = x.clone()
    same = ops.combine(x, [y0], [0.5, 2.0, 0.0], out=x)
    assert same is x and torch.equal(x, 0.5 * x_before + 2.0 * y0)


@pytest.mark.parametrize("backend", FAST)
def test_rows_split_like_one_batch(backend):
    x, s = make((10, 3, 5), seed=12), make((10, 3, 5), seed=13)
    per = torch.rand(10, dtype=torch.float64)
    with fastscore.use_backend(backend):
        full = ops.update(x, s, per, 0.1, per, seed=5, offset=40)
        part = ops.update(x[3:7], s[3:7], per[3:7], 0.1, per[3:7], seed=5, offset=43)
    assert_bits_equal(part, full[3:7])


# The plain doors (ops._plain_door): the common eager calls skip the general way's checks.
DOOR_CALLS = {
    "langevin_step_": lambda x, s, seed: ops.langevin_step_(x, s, 0.003, seed=seed, offset=3),
    "step_": lambda x, s, seed: ops.step_(x, s, 0.9, 0.1, 0.05, seed=seed, offset=3),
    "combine": lambda x, s, seed: ops.combine(x, [s, s * 2], [0.9, 0.1, -0.2, 0.05], seed=seed, offset=3),
    "combine out=": lambda x, s, seed: ops.combine(x, [s], [0.9, 0.1, 0.05], seed=seed, offset=3,
                                                   out=torch.empty_like(x)),
    "combine out=x": lambda x, s, seed: ops.combine(x, [s], [0.9, 0.1, 0.0], seed=seed, offset=3, out=x),
    "combine out2=": lambda x, s, seed: torch.stack(_with_out2(x, s, seed)),
    "update out=": lambda x, s, seed: ops.update(x, s, 0.9, 0.1, 0.05, seed=seed, offset=3, out=torch.empty_like(x)),
    "update out=strided": lambda x, s, seed: ops.update(  # likelihood.py's stage[:, :D]
        x, s, 0.9, 0.1, 0.05, seed=seed, offset=3, out=torch.empty(x.shape[0], x.shape[2], x.shape[1]).transpose(1, 2)),
    "langevin_corrector_": lambda x, s, seed: ops.langevin_corrector_(x, s, 0.16, seed=seed, offset=3, alpha=0.7),
    "langevin_corrector_ per_sample": lambda x, s, seed: ops.langevin_corrector_(
        x, s, 0.16, seed=seed, offset=3, step_size_mode="per_sample"),
}


def _with_out2(x, s, seed):
    out2 = torch.empty_like(x)
    out = ops.combine(x, [s, s * 2], [0.9, 0.1, -0.2, 0.05], seed=seed, offset=3, out2=out2,
                      coefs2=[1.0, 0.5, 0.0, -0.05])
    return out, out2


@pytest.mark.parametrize("op", list(DOOR_CALLS))
def test_common_eager_calls_take_the_plain_door_with_the_general_bits(op, monkeypatch):
    """The samplers' common eager calls (float coefficients, int seed and offset, plain CPU
    tensors) reach the kernel without ops._call, for every int seed (step seeds from
    derive_seed fill all 64 bits), with the bits of the general way (a tensor seed takes
    it); the profiler still takes the general way (its label is recorded)."""
    skip_unsupported("cpp")
    call = DOOR_CALLS[op]
    general_calls = []
    general = ops._call

    def counted(*args, **kwargs):
        general_calls.append(args[0])
        return general(*args, **kwargs)

    with fastscore.use_backend("cpp"):
        x, s = make((5, 3, 7), torch.float32, "transposed", 1), make((5, 3, 7), torch.float32, "transposed", 2)
        monkeypatch.setattr(ops, "_call", counted)
        for seed in (11, 2**63 + 1, 2**64 - 1):
            fast = call(x.clone(), s, seed)
            assert general_calls == [], seed
            slow = call(x.clone(), s, seed_as(seed, "tensor"))
            assert len(general_calls) == 1, seed
            general_calls.clear()
            assert_bits_equal(fast, slow, f"seed {seed}")
        with torch.profiler.profile() as prof:
            call(x.clone(), s, 11)
        assert len(general_calls) == 1
    assert any(e.key.startswith("fastscore::") for e in prof.key_averages())


def test_plain_doors_leave_the_errors_to_the_general_way():
    """What the doors do not take reaches the general way's checks: a leaf that needs grad,
    combine's out starting at an input, update into x, a negative snr, an unknown
    step-size mode."""
    skip_unsupported("cpp")
    x, s = torch.randn(4, 3), torch.randn(4, 3)
    with fastscore.use_backend("cpp"):
        with pytest.raises(RuntimeError, match="leaf that requires grad"):
            ops.step_(x.clone().requires_grad_(), s, 0.9, 0.1, 0.05, seed=11)
        with pytest.raises(ValueError, match="out must not share memory"):
            ops.combine(x, [s], [0.9, 0.1, 0.05], seed=11, out=s)
        with pytest.raises(ValueError, match="out2 must not share memory"):
            ops.combine(x, [s], [0.9, 0.1, 0.05], seed=11, out2=x, coefs2=[1.0, 0.0, 0.0])
        with pytest.raises(ValueError, match="coefs2 is given without out2"):
            ops.combine(x, [s], [0.9, 0.1, 0.05], seed=11, coefs2=[1.0, 0.0, 0.0])
        with pytest.raises(ValueError, match="use step_"):
            ops.update(x, s, 0.9, 0.1, 0.05, seed=11, out=x)
        with pytest.raises(ValueError, match="snr"):
            ops.langevin_corrector_(x, s, -0.1, seed=11)
        with pytest.raises(ValueError, match="step_size_mode"):
            ops.langevin_corrector_(x, s, 0.1, seed=11, step_size_mode="row")
        empty = torch.empty(0, 3)
        assert ops.langevin_corrector_(empty, empty, 0.1, seed=11) is empty


@pytest.mark.parametrize("backend", FAST)
def test_langevin_step_leaves_a_float64_step_size_tensor_as_it_is(backend):
    """sqrt(2 eps) of a per-sample eps is computed in place on a float64 copy: never on eps."""
    skip_unsupported(backend)
    eps = torch.tensor([0.001, 0.002, 0.0], dtype=torch.float64)
    with fastscore.use_backend(backend):
        x, s = make((3, 5), torch.float32, "contiguous", 1), make((3, 5), torch.float32, "contiguous", 2)
        want = x.double() + eps[:, None] * s.double() + torch.sqrt(2 * eps)[:, None] * reference.noise((3, 5), 4, 0).double()
        ops.langevin_step_(x, s, eps, seed=4)
    assert torch.equal(eps, torch.tensor([0.001, 0.002, 0.0], dtype=torch.float64))
    assert torch.allclose(x.double(), want, rtol=1e-6, atol=1e-6)
