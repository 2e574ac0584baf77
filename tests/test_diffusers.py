"""fastscore.diffusers against diffusers 0.42 itself (CPU, nothing downloaded: a tiny
randomly initialised UNet2DModel):
* diffusers' own ScoreSdeVePipeline and DDPMPipeline, unchanged, with the subclass loaded by
  ``from_config(pipe.scheduler.config)``: the original's images and generator state;
* step by step in the standard loop, every fused configuration: the original's samples to
  float32 rounding, the same generator state, inputs never written; configurations that are
  not fused fall back to the original exactly;
* without a generator: the fastscore stream under ``noise_seed`` (reproducible, torch's
  global RNG untouched), with the moments of Gaussian data that the original shows.
"""

import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")  # noqa: E402  (the extra "diffusers"; run.sh installs it)
from diffusers import (DDPMPipeline, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,  # noqa: E402
                       ScoreSdeVePipeline, ScoreSdeVeScheduler, UNet2DModel)
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

from fastscore import diffusers as FD  # noqa: E402

diffusers_logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")  # diffusers' own


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()


def rounding_tolerance(n_steps, scale):
    """Each step rounds a handful of times in both (diffusers 3-5 chained float32 ops, the
    fused op once per term), at most u of the magnitudes involved: n_steps * 16 u * max|x|."""
    return n_steps * 16 * torch.finfo(torch.float32).eps * scale


def test_score_sde_ve_pipeline_gives_the_originals_images(unet):
    def run(scheduler):
        pipe = ScoreSdeVePipeline(unet=unet, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        g = torch.Generator().manual_seed(0)
        return pipe(batch_size=2, num_inference_steps=4, generator=g, output_type="np").images, g.get_state()

    original = ScoreSdeVeScheduler()
    fused = FD.ScoreSdeVeScheduler.from_config(original.config)
    assert isinstance(fused, ScoreSdeVeScheduler) and dict(fused.config) == dict(original.config)
    (want, want_state), (got, got_state) = run(original), run(fused)
    assert want.shape == (2, 8, 8, 3) and (got == want).all() and torch.equal(got_state, want_state)


def test_score_sde_ve_steps_equal_the_original_bit_for_bit(unet):
    """The pipeline's loop, un-clamped: step_pred and step_correct round as diffusers does."""
    def run(scheduler):
        g = torch.Generator().manual_seed(0)
        sample = randn_tensor((2, 3, 8, 8), generator=g) * scheduler.init_noise_sigma
        scheduler.set_timesteps(5)
        scheduler.set_sigmas(5)
        means = []
        with torch.no_grad():
            for i, t in enumerate(scheduler.timesteps):
                sigma_t = scheduler.sigmas[i] * torch.ones(2)
                out = unet(sample, sigma_t).sample
                kept, kept_out = sample.clone(), out.clone()
                corrected = scheduler.step_correct(out, sample, generator=g).prev_sample
                assert torch.equal(kept, sample) and torch.equal(kept_out, out), "step_correct wrote its inputs"
                sample = corrected
                out = unet(sample, sigma_t).sample
                kept, kept_out = sample.clone(), out.clone()
                step = scheduler.step_pred(out, t, sample, generator=g)
                assert torch.equal(kept, sample) and torch.equal(kept_out, out), "step_pred wrote its inputs"
                sample = step.prev_sample
                means.append(step.prev_sample_mean)
        return means, g.get_state()

    (want, want_state), (got, got_state) = run(ScoreSdeVeScheduler()), run(FD.ScoreSdeVeScheduler())
    assert torch.equal(got_state, want_state)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def denoise(unet, scheduler, steps, generator, x=None):
    """diffusers' standard loop; checks that step never writes sample or model_output."""
    scheduler.set_timesteps(steps)
    if x is None:
        x = randn_tensor((2, 3, 8, 8), generator=generator) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = unet(scheduler.scale_model_input(x, t), t).sample
            kept, kept_eps = x.clone(), eps.clone()
            new = scheduler.step(eps, t, x, generator=generator).prev_sample
            assert torch.equal(kept, x) and torch.equal(kept_eps, eps), "step wrote its inputs"
            x = new
    return x


FUSED = [(EulerAncestralDiscreteScheduler, FD.EulerAncestralDiscreteScheduler, cfg) for cfg in (
    {}, {"prediction_type": "v_prediction"},
    {"beta_schedule": "scaled_linear", "timestep_spacing": "leading", "steps_offset": 1})]
FUSED += [(DPMSolverMultistepScheduler, FD.DPMSolverMultistepScheduler,
           {"algorithm_type": algo, "solver_order": order, "solver_type": solver, **extra})
          for algo in ("dpmsolver++", "sde-dpmsolver++")
          for order, solver in ((1, "midpoint"), (2, "midpoint"), (2, "heun"))
          for extra in ({}, {"use_karras_sigmas": True}, {"final_sigmas_type": "sigma_min"},
                        {"prediction_type": "v_prediction"}, {"prediction_type": "sample"})]
FUSED_IDS = [f"{base.__name__[:8]}-" + "-".join(f"{k}={v}" for k, v in cfg.items()) for base, _, cfg in FUSED]


@pytest.mark.parametrize("base,fused_cls,config", FUSED, ids=FUSED_IDS)
def test_fused_steps_match_the_original(unet, base, fused_cls, config):
    original = base(**config)
    fused = fused_cls.from_config(original.config)
    assert isinstance(fused, base) and type(fused).__name__ == base.__name__
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    want, got = denoise(unet, original, 10, g1), denoise(unet, fused, 10, g2)
    assert torch.equal(g1.get_state(), g2.get_state())
    torch.testing.assert_close(got, want, rtol=0, atol=rounding_tolerance(10, want.abs().max().item() + 1))
    assert fused._fastscore_table is not None  # the fused path ran, not the fallback


@pytest.mark.parametrize("config", [{"thresholding": True, "prediction_type": "sample"}, {"solver_order": 3},
                                    {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}])
def test_unfused_configurations_fall_back_to_the_original(unet, config):
    original = DPMSolverMultistepScheduler(**config)
    fused = FD.DPMSolverMultistepScheduler.from_config(original.config)
    want = denoise(unet, original, 6, torch.Generator().manual_seed(2))
    got = denoise(unet, fused, 6, torch.Generator().manual_seed(2))
    assert torch.equal(got, want) and fused._fastscore_table is None


def test_ddpm_pipeline_runs_unchanged_with_the_fused_scheduler(unet, tmp_path):
    def run(scheduler):
        pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        g = torch.Generator().manual_seed(3)
        return pipe(batch_size=2, generator=g, num_inference_steps=8, output_type="np").images, g.get_state()

    original = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")
    original.save_config(tmp_path)
    fused = FD.DPMSolverMultistepScheduler.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(fused.config) == public(original.config)
    (want, want_state), (got, got_state) = run(original), run(fused)
    assert abs(got - want).max() <= rounding_tolerance(8, 1.0) and torch.equal(got_state, want_state)


# --------------------------------------------------------------------------- without a generator: the stream

S0 = 1.5  # the data: N(0, S0^2) per element


class GaussianEps:
    """The exact epsilon-prediction of N(0, S0^2) data for a sigma-parametrised scheduler:
    x = x0 + sigma n and the model sees x / sqrt(sigma^2 + 1), so
    E[n | x] = sigma / (S0^2 + sigma^2) * x."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def __call__(self, model_input, t):
        sigma = self.scheduler.sigmas[self.scheduler.step_index or 0].double()
        x = model_input * torch.sqrt(sigma ** 2 + 1)
        return (sigma / (S0 ** 2 + sigma ** 2) * x).float()


def gaussian_loop(scheduler, x, generator):
    eps = GaussianEps(scheduler)
    scheduler.set_timesteps(25)
    for t in scheduler.timesteps:
        x = scheduler.step(eps(scheduler.scale_model_input(x, t), t), t, x, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("base,fused_cls,config", [
    (EulerAncestralDiscreteScheduler, FD.EulerAncestralDiscreteScheduler, {}),
    (DPMSolverMultistepScheduler, FD.DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"})])
def test_stream_noise_without_a_generator(base, fused_cls, config):
    """Same noise_seed -> same samples; another -> other samples; the global RNG untouched;
    moments of M elements against the target N(0, S0^2) within 4 standard errors plus the
    original's discretisation bias (measured in its own run of the same size, with its
    standard error), and against the original's run (two-sample)."""
    n = 1 << 15
    x = torch.randn(n // 8, 8, generator=torch.Generator().manual_seed(4))
    original, fused = base(**config), fused_cls.from_config(base(**config).config)
    x = x * original.init_noise_sigma
    peer = gaussian_loop(original, x, torch.Generator().manual_seed(5))
    state = torch.get_rng_state()
    fused.noise_seed = 7
    ours = gaussian_loop(fused, x, None)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG was used"
    assert torch.equal(ours, gaussian_loop(fused, x, None))
    fused.noise_seed = 8
    assert not torch.equal(ours, gaussian_loop(fused, x, None))
    pm, pv = peer.double().mean().item(), peer.double().var().item()
    om, ov = ours.double().mean().item(), ours.double().var().item()
    se_mean, se_var = S0 / math.sqrt(n), S0 ** 2 * math.sqrt(2.0 / n)
    assert abs(om) <= 8 * se_mean + abs(pm) and abs(ov - S0 ** 2) <= 8 * se_var + abs(pv - S0 ** 2), (om, ov, pm, pv)
    assert abs(om - pm) <= 4 * math.sqrt(2) * se_mean and abs(ov - pv) <= 4 * math.sqrt(2) * se_var, (om, ov, pm, pv)


def test_score_sde_ve_without_a_generator_uses_the_stream():
    """Both steps draw the stream (draw k after set_timesteps: derive_seed(noise_seed, k)),
    not torch's global RNG: reproducible per noise_seed, and the noise is standard normal."""
    scheduler = FD.ScoreSdeVeScheduler()
    x, out = torch.randn(64, 3, 8, 8), torch.zeros(64, 3, 8, 8)

    def run(seed):
        scheduler.noise_seed = seed
        scheduler.set_timesteps(3)
        scheduler.set_sigmas(3)
        t = scheduler.timesteps[1]
        corrected = scheduler.step_correct(out + 1.0, x).prev_sample
        return corrected, scheduler.step_pred(out, t, x)

    state = torch.get_rng_state()
    (c1, p1), (c1b, p1b), (c2, p2) = run(1), run(1), run(2)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG was used"
    assert torch.equal(c1, c1b) and torch.equal(p1.prev_sample, p1b.prev_sample)
    assert not torch.equal(c1, c2) and not torch.equal(p1.prev_sample, p2.prev_sample)
    z = (p1.prev_sample - p1.prev_sample_mean).double()  # g z with g > 0 per sample
    z = z / z.reshape(64, -1).std(dim=1).reshape(64, 1, 1, 1)
    m = z.numel()
    assert abs(z.mean().item()) <= 5 / math.sqrt(m)


def test_score_sde_ve_steps_run_on_meta_tensors_without_host_reads():
    """Both fused steps with the stream make no host read of device data (a sync per step on
    a GPU): on meta tensors any .item(), .tolist() or bool() of a tensor raises."""
    scheduler = FD.ScoreSdeVeScheduler()
    scheduler.set_timesteps(5)
    scheduler.set_sigmas(5)
    x, out = torch.empty(4, 3, 8, 8, device="meta"), torch.empty(4, 3, 8, 8, device="meta")
    t = scheduler.timesteps[2].to("meta")
    corrected = scheduler.step_correct(out, x).prev_sample
    step = scheduler.step_pred(out, t, corrected)
    for y in (corrected, step.prev_sample, step.prev_sample_mean):
        assert y.device.type == "meta" and y.shape == x.shape and y.dtype == x.dtype
