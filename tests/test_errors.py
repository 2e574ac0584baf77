"""Bad input: a clear exception naming the argument, and the input left unchanged."""

import pytest
import torch

import fastscore
from fastscore import backends, ops
from fastscore.backends import available_backends

BACKENDS = available_backends("cpu")


def x_and_score(shape=(4, 6), dtype=torch.float32):
    return torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)


CASES = [
    ("x", TypeError, lambda x, s: ops.step_(x.long(), s, 1.0, 0.1, 0.1)),
    ("x", TypeError, lambda x, s: ops.langevin_step_([1.0], s, 0.1)),
    ("score", ValueError, lambda x, s: ops.langevin_step_(x, s[:, :5], 0.1)),
    ("score", TypeError, lambda x, s: ops.langevin_step_(x, s.double(), 0.1)),
    ("score", TypeError, lambda x, s: ops.langevin_step_(x, s.int(), 0.1)),
    ("score", TypeError, lambda x, s: ops.langevin_step_(x, None, 0.1)),
    ("step_size", ValueError, lambda x, s: ops.langevin_step_(x, s, -0.1)),
    ("step_size", ValueError, lambda x, s: ops.langevin_step_(x, s, float("nan"))),
    ("step_size", ValueError, lambda x, s: ops.langevin_step_(x, s, torch.tensor([0.1, -0.1, 0.1, 0.1]))),
    ("step_size", ValueError, lambda x, s: ops.langevin_step_(x, s, torch.full((3,), 0.1))),
    ("step_size", ValueError, lambda x, s: ops.langevin_step_(x, s, torch.full((4, 1), 0.1))),
    ("step_size", TypeError, lambda x, s: ops.langevin_step_(x, s, torch.ones(4, dtype=torch.int64))),
    ("step_size", TypeError, lambda x, s: ops.langevin_step_(x, s, "0.1")),
    ("a", ValueError, lambda x, s: ops.step_(x, s, torch.ones(5), 0.1, 0.1)),
    ("c", TypeError, lambda x, s: ops.step_(x, s, 1.0, 0.1, None)),
    ("sigma", ValueError, lambda x, s: ops.perturb(x, -1.0)),
    ("sigma", ValueError, lambda x, s: ops.perturb(x, torch.tensor([0.1, 0.2, -0.3, 0.1]))),
    ("mean_scale", ValueError, lambda x, s: ops.perturb(x, 0.1, mean_scale=torch.ones(2))),
    ("seed", TypeError, lambda x, s: ops.langevin_step_(x, s, 0.1, seed=1.5)),
    ("seed", TypeError, lambda x, s: ops.langevin_step_(x, s, 0.1, seed=torch.tensor([1, 2]))),
    ("offset", ValueError, lambda x, s: ops.langevin_step_(x, s, 0.1, offset=-1)),
    ("offset", ValueError, lambda x, s: ops.perturb(x, 0.1, offset=-3)),
    ("x_mean", ValueError, lambda x, s: ops.step_(x, s, 1.0, 0.1, 0.1, x_mean=torch.empty(4, 5))),
    ("x_mean", TypeError, lambda x, s: ops.step_(x, s, 1.0, 0.1, 0.1, x_mean=torch.empty(4, 6, dtype=torch.float64))),
    ("x_mean", ValueError, lambda x, s: ops.step_(x, s, 1.0, 0.1, 0.1, x_mean=x)),
    ("noise", ValueError, lambda x, s: ops.step_(x, s, 1.0, 0.1, 0.1, noise=torch.randn(4, 7))),
    ("noise", TypeError, lambda x, s: ops.perturb(x, 0.1, noise=torch.ones(4, 6, dtype=torch.int32))),
    ("x", RuntimeError, lambda x, s: ops.langevin_step_(x.requires_grad_(), s, 0.1)),
    ("out", ValueError, lambda x, s: ops.update(x, s, 1.0, 0.1, out=torch.empty(4, 5))),
    ("out", TypeError, lambda x, s: ops.update(x, s, 1.0, 0.1, out=torch.empty(4, 6, dtype=torch.float64))),
    ("out", ValueError, lambda x, s: ops.update(x, s, 1.0, 0.1, out=x)),
    ("score", ValueError, lambda x, s: ops.update(x, s[:3], 1.0, 0.1)),
    ("snr", ValueError, lambda x, s: ops.langevin_corrector_(x, s, -0.1)),
    ("alpha", ValueError, lambda x, s: ops.langevin_corrector_(x, s, 0.16, alpha=-1.0)),
    ("alpha", ValueError, lambda x, s: ops.langevin_corrector_(x, s, 0.16, alpha=torch.ones(3))),
    ("step_size_mode", ValueError, lambda x, s: ops.langevin_corrector_(x, s, 0.16, step_size_mode="mean")),
    ("score", TypeError, lambda x, s: ops.langevin_corrector_(x, None, 0.16)),
    ("x_mean", ValueError, lambda x, s: ops.langevin_corrector_(x, s, 0.16, x_mean=torch.empty(2, 6))),
    ("score", ValueError, lambda x, s: ops.dsm_loss(torch.tensor(1.0), 0.5)),
    ("sigma", ValueError, lambda x, s: ops.dsm_loss(s, torch.tensor([0.1, 0.0, 0.2, 0.3]))),
    ("noise", ValueError, lambda x, s: ops.dsm_loss(s, 0.5, noise=torch.randn(4, 5))),
    ("shape", ValueError, lambda x, s: ops.probes((3, -1), seed=0)),
    ("shape", ValueError, lambda x, s: fastscore.noise((3, -1), seed=0)),
    ("dtype", TypeError, lambda x, s: fastscore.noise((3,), seed=0, dtype=torch.int32)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_names_the_argument_and_changes_nothing(backend, case):
    name, exc, call = CASES[case]
    x, s = x_and_score()
    x_before, s_before = x.clone(), s.clone()
    with fastscore.use_backend(backend), pytest.raises(exc, match=name):
        call(x, s)
    assert torch.equal(x.detach(), x_before) and torch.equal(s, s_before)


def test_score_requiring_grad_is_refused_by_in_place_step():
    x, s = x_and_score()
    with pytest.raises(RuntimeError, match="not differentiable"):
        ops.langevin_step_(x, s.requires_grad_(), 0.1)
    with torch.no_grad():  # the documented way: fine
        ops.langevin_step_(x, s, 0.1)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        fastscore.set_backend("tpu")
    with pytest.raises(ValueError, match="backend"):
        with fastscore.use_backend("fast"):
            pass


def test_forced_backend_that_cannot_run_lists_every_reason(monkeypatch):
    x, s = x_and_score()
    with fastscore.use_backend("cuda"), pytest.raises(RuntimeError) as err:
        ops.langevin_step_(x, s, 0.1)
    assert "cuda runs on CUDA tensors" in str(err.value) and "Available here" in str(err.value)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    backends._resolved.clear()
    with fastscore.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        ops.langevin_step_(x, s, 0.1)
    backends._resolved.clear()


def test_empty_tensors_are_a_no_op():
    for backend in BACKENDS:
        with fastscore.use_backend(backend):
            x = torch.empty(0, 3)
            assert ops.langevin_step_(x, torch.empty(0, 3), 0.1).shape == (0, 3)
            assert ops.perturb(x, 0.1).shape == (0, 3)
            assert fastscore.noise((0,), seed=1).shape == (0,)


def test_backend_selection_api():
    assert fastscore.get_backend() == "auto"
    with fastscore.use_backend("reference"):
        assert fastscore.get_backend() == "reference"
    assert fastscore.get_backend() == "auto"
    assert "reference" in fastscore.available_backends()


@pytest.mark.parametrize("backend", BACKENDS)
def test_in_place_update_is_seen_by_autograd(backend):
    """An x saved by an autograd graph and then stepped in place must not be used
    silently: the version counter is bumped on every path, fast ones included."""
    x, s = x_and_score()
    w = torch.ones(6, requires_grad=True)
    y = (x * w).sum()  # saves x for w's gradient
    with fastscore.use_backend(backend), torch.no_grad():
        ops.langevin_step_(x, s, 0.1, seed=1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
