"""Shared by tests/test_distributed.py and its worker: the sampler calls and the training
batch, so that both processes and the one-process run see the same arguments."""

import torch

from fastscore import k_diffusion, samplers
from fastscore.sde import VPSDE, geometric_sigmas


def gaussian_score(x, t):
    return -x / (1.0 + torch.as_tensor(t, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1))) ** 2)


def denoiser(x, sigma, **_):
    return x / (1.0 + sigma.reshape(-1, 1) ** 2)


def CASES():
    x0 = torch.linspace(-3, 3, 9 * 2).reshape(9, 2)  # 9 rows: 5 + 4 on 2 ranks
    sigmas = k_diffusion.get_sigmas_karras(6, 0.02, 10.0)
    return {
        "annealed_langevin": (samplers.annealed_langevin, (gaussian_score, x0, geometric_sigmas(5.0, 0.1, 4)),
                              {"n_steps_each": 3, "seed": 11}),
        "pc_sample": (samplers.pc_sample, (gaussian_score, VPSDE(N=40), (7, 3)),
                      {"step_size_mode": "per_sample", "seed": 12}),
        "euler_ancestral": (k_diffusion.sample_euler_ancestral, (denoiser, x0 * 10, sigmas), {"seed": 13}),
        "dpmpp_sde": (k_diffusion.sample_dpmpp_sde, (denoiser, x0 * 10, sigmas), {"seed": 14, "offset": 2}),
    }


def make_model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 2))

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, sigma):
            return self.net(torch.cat([x, sigma.log()[:, None]], 1)) / sigma[:, None]

    return Model()


def train_batch(n):
    g = torch.Generator().manual_seed(5)
    return torch.randn(n, 2, generator=g), geometric_sigmas(2.0, 0.05, 5)
