"""Capturable sampling (SPEC "Capturable sampling"), shown on the CPU:
* every sampler (fastscore.k_diffusion's too) but the adaptive rk45 runs to completion on the `meta` device — where any
  host read of device data fails — and, once its SDE schedules sit on the device, copies
  nothing from the host either (what a CUDA-graph capture needs);
* ``capture(sampler, ...)`` gives ``run(seed)`` equal to the sampler bit for bit, for seeds
  1, 2, 1 in a row (a replay does not keep the first seed);
* an int seed and the same seed as a tensor give identical samples;
* torch.compile(fullgraph=True) of a short sampler run: one graph for three seed tensors.
The CUDA-graph path itself runs in ``python -m fastscore gpucheck``.
"""

import pytest
import torch
import torch._dynamo.testing
from torch.utils._python_dispatch import TorchDispatchMode

from fastscore import backends, samplers
from fastscore import k_diffusion as K
from fastscore import sde as S
from fastscore._common import seed_bits
from test_meta import no_host_reads  # noqa: F401  (the fixture)


def score(x, t):
    """A score made of torch ops (Gaussian data N(0, 1/2) perturbed at scale t)."""
    tt = t.reshape((-1,) + (1,) * (x.dim() - 1))
    return -x / (0.5 + tt * tt)


def denoiser(x, sigma):
    """The exact denoiser of the same data, k-diffusion's model(x, sigma * s_in)."""
    s = sigma.reshape((-1,) + (1,) * (x.dim() - 1))
    return x * (0.5 / (0.5 + s * s))


K_SAMPLERS = [n for n in K.__all__ if n.startswith("sample_")]
CHURNED = ("sample_euler", "sample_heun", "sample_dpm_2")  # noise only with churn
SEED_FREE = ("sample_lms", "sample_dpmpp_2m")  # no noise at all: the seed changes nothing


def runs(device, dtype=torch.float32):
    """(name, sampler, args, kwargs) of every capturable sampler, small."""
    x0 = torch.zeros(3, 3, 2, device=device, dtype=dtype)  # 3 rows: the interpreter runs a program per row
    sigmas = torch.tensor([3.0, 1.0, 0.3], dtype=torch.float64).to(device)
    ve, vp, sub = S.VESDE(sigma_max=5.0, N=6), S.VPSDE(beta_max=5.0, N=8), S.SubVPSDE(N=6)
    shape = (3, 3, 2)
    kw = {"device": device, "dtype": dtype}
    return [
        ("langevin", samplers.langevin, (score, x0, 0.05, 4), {}),
        ("annealed_langevin", samplers.annealed_langevin, (score, x0, sigmas, 2, 0.01), {"denoise": True}),
        ("pc_langevin", samplers.pc_sample, (score, vp, shape), kw),
        ("pc_ald_ancestral", samplers.pc_sample, (score, ve, shape), {"predictor": "ancestral", "corrector": "ald",
                                                                      **kw}),
        ("pc_corrector_only", samplers.pc_sample, (score, ve, shape), {"predictor": None, "n_corrector_steps": 2,
                                                                       "step_size_mode": "per_sample", **kw}),
        ("euler_maruyama", samplers.euler_maruyama, (score, sub, shape), kw),
        ("reverse_diffusion", samplers.reverse_diffusion, (score, vp, shape), kw),
        ("ancestral", samplers.ancestral, (score, vp, shape), kw),
        ("ode_heun", samplers.ode_sample, (score, vp, shape), {"method": "heun", "n_steps": 4, **kw}),
        ("ode_euler", samplers.ode_sample, (score, ve, shape), {"method": "euler", "n_steps": 4, **kw}),
    ] + [  # k-diffusion's samplers: the schedule stays where k-diffusion builds it, on the CPU
        (name, getattr(K, name), (denoiser, x0 + 3.0, K.get_sigmas_karras(4, 0.05, 3.0)),
         {"disable": True, **({"s_churn": 1.0} if name in CHURNED else {})})
        for name in K_SAMPLERS
    ]


RUN_NAMES = [r[0] for r in runs("cpu")]


class NoHostToDevice(TorchDispatchMode):
    """Fails on any copy of a CPU tensor to another device."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        src = [a for a in args if isinstance(a, torch.Tensor) and a.device.type == "cpu" and a.dim() > 0]
        if src and any(isinstance(o, torch.Tensor) and o.device.type == "meta" for o in outs) \
                and func.__name__.split(".")[0] in ("_to_copy", "copy_", "to", "_copy_from"):
            raise AssertionError(f"host-to-device copy inside a run: {func}")
        return out


@pytest.mark.parametrize("name", RUN_NAMES)
def test_every_sampler_runs_on_meta_without_host_reads_or_copies(name, no_host_reads):  # noqa: F811
    _, sampler, args, kwargs = next(r for r in runs("meta") if r[0] == name)
    seed = torch.tensor(7, device="meta")
    sampler(*args, **kwargs, seed=seed)  # the first run puts the SDE's schedules on the device
    with NoHostToDevice():
        x = sampler(*args, **kwargs, seed=seed)
    assert x.device.type == "meta" and x.shape == (3, 3, 2)


@pytest.mark.parametrize("name", RUN_NAMES)
@pytest.mark.parametrize("backend", [b for b in backends.available_backends("cpu")])
def test_capture_equals_the_sampler_for_seeds_1_2_1(name, backend):
    import fastscore

    _, sampler, args, kwargs = next(r for r in runs("cpu") if r[0] == name)
    with fastscore.use_backend(backend):
        run = samplers.capture(sampler, *args, **kwargs)
        for seed in (1, 2, 1, 2**63 + 5):
            got = run(seed).clone()
            want = sampler(*args, **kwargs, seed=seed)
            assert torch.equal(got, want), (name, seed)
        assert torch.equal(run(1), run(2)) == (name in SEED_FREE)


@pytest.mark.parametrize("name", RUN_NAMES)
def test_int_and_tensor_seeds_give_identical_samples(name):
    _, sampler, args, kwargs = next(r for r in runs("cpu") if r[0] == name)
    for seed in (3, 2**64 - 2):
        a = sampler(*args, **kwargs, seed=seed)
        b = sampler(*args, **kwargs, seed=torch.tensor(seed_bits(seed)))
        assert torch.equal(a, b), (name, seed)


@pytest.mark.skipif(not backends.HAS_EXTENSION, reason="fastscore._C not built")
@pytest.mark.parametrize("name", ["langevin", "annealed_langevin", "pc_langevin", "ode_heun"])
def test_compiled_sampler_is_one_graph_for_all_seeds(name):
    _, sampler, args, kwargs = next(r for r in runs("cpu") if r[0] == name)

    def run(seed):
        return sampler(*args, **kwargs, seed=seed)

    run(torch.tensor(0))  # schedules on the device before tracing
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(run, fullgraph=True, backend=counter)
    for seed in (1, 2, 2**40 + 3):
        assert torch.equal(compiled(torch.tensor(seed)), run(torch.tensor(seed))), seed
    assert counter.frame_count == 1


def test_capture_refuses_a_fixed_seed():
    with pytest.raises(ValueError, match="seed"):
        samplers.capture(samplers.langevin, score, torch.zeros(2, 2), 0.1, 3, seed=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU: checked by python -m fastscore gpucheck")
def test_cuda_capture_replays_fresh_noise_per_seed():
    x0 = torch.zeros(64, 3, 8, 8, device="cuda")
    run = samplers.capture(samplers.langevin, score, x0, 0.05, 10)
    for seed in (1, 2, 1):
        assert torch.equal(run(seed), samplers.langevin(score, x0, 0.05, 10, seed=seed))
