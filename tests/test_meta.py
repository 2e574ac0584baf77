"""No host read of device data on a launch path, shown on the CPU: every public op (and
derive_seeds) runs on `meta` tensors with `meta` seed, offset and coefficient tensors —
the op layer's checks, normalisation and dispatch, then the registered op's fake — while
every way of reading a non-CPU tensor on the host raises. On a GPU the same path is what
CUDA-graph capture records."""

import pytest
import torch

from fastscore import ops

HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


@pytest.fixture
def no_host_reads(monkeypatch):
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def guarded(self, *args, _original=original, _name=name, **kwargs):
            if self.device.type != "cpu":
                raise AssertionError(f"host read of a {self.device.type} tensor: Tensor.{_name}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, guarded)


def meta(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


def test_every_op_runs_on_meta_without_host_reads(no_host_reads):
    seed, offset = torch.tensor(7, device="meta"), torch.tensor(3, device="meta")
    x, s, y = meta(4, 3, 5), meta(4, 3, 5), meta(4, 3, 5)
    per, scalar = meta(4), meta()
    assert ops.noise((4, 5), seed, offset, device="meta").shape == (4, 5)
    assert ops.noise((4, 5), seed, offset, dtype=torch.float16, device="meta").dtype == torch.float16
    assert ops.probes((4, 5), seed, offset, device="meta").shape == (4, 5)
    assert ops.philox_words(seed, 0, 8, device="meta").shape == (8, 4)
    assert ops.philox_labels(seed, 0, 8, 10, device="meta").shape == (8,)
    steps = ops.derive_seeds(seed, 16)
    assert steps.device.type == "meta" and steps.shape == (16,) and steps.dtype == torch.int64
    mean = meta(4, 3, 5)
    ops.step_(x, s, per, scalar, per, seed=steps[3], offset=offset, x_mean=mean)
    ops.step_(x, None, 1.0, 0.0, 0.0, seed=steps[4])
    ops.langevin_step_(x, s, per, seed=seed, offset=offset)
    ops.langevin_step_(x, s, 0.01, seed=seed)
    assert ops.update(x, s, scalar, per, per, seed=seed, offset=offset).device.type == "meta"
    assert ops.combine(x, [s, y, s, y], [1.0, per, scalar, 0.5, per, per], seed=seed, offset=offset,
                       out2=meta(4, 3, 5), coefs2=[per, 1.0, 0.0, 0.0, 0.0, 0.0]).shape == x.shape
    ops.langevin_corrector_(x, s, 0.16, seed=seed, offset=offset, alpha=per, x_mean=mean)
    ops.langevin_corrector_(x, s, 0.16, seed=seed, step_size_mode="per_sample", noise=meta(4, 3, 5))
    xr = meta(4, 3, 5).requires_grad_()
    sigma = meta(4).requires_grad_()
    xt = ops.perturb(xr, sigma, seed=seed, offset=offset, mean_scale=scalar)
    sr = meta(4, 3, 5).requires_grad_()
    loss = ops.dsm_loss(sr, per, seed=seed, offset=offset, weight=per)
    jv = meta(4, 2, 3, 5).requires_grad_()
    terms = ops.sliced_score_terms(sr, jv, meta(4, 2, 3, 5))
    (xt.sum() + loss.sum() + terms.sum()).backward()
    assert xr.grad.device.type == "meta" and sigma.grad.shape == (4,) and sr.grad.shape == sr.shape
    assert jv.grad.shape == jv.shape


def test_losses_with_a_device_seed_run_on_meta_without_host_reads(no_host_reads):
    """anneal_dsm's levels and sde_score_loss's times come from derive_seed(seed, 0): for a
    tensor seed derived on its device, never read (the loss, its backward, on meta)."""
    from fastscore import losses, sde

    x, seed = meta(4, 3), torch.tensor(7, device="meta")
    h = meta(4, 3).requires_grad_()
    sigmas = torch.linspace(1.0, 0.1, 5, device="meta")
    for loss in (losses.anneal_dsm(lambda x_tilde, sigma: h * sigma[:, None], x, sigmas, seed=seed),
                 losses.sde_score_loss(lambda x_t, t: h * t[:, None], sde.VPSDE(), x, seed=seed)):
        assert loss.device.type == "meta" and loss.shape == ()
        loss.backward()
    assert h.grad.shape == h.shape


def test_the_guard_catches_a_host_read(no_host_reads):
    with pytest.raises(AssertionError, match="host read"):
        torch.tensor(3, device="meta").item()
    assert torch.tensor(3).item() == 3  # CPU tensors are host memory: allowed
