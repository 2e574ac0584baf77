"""``python -m fastscore profile``: a sampler run and a training step under torch.profiler
(NVTX ranges on CUDA: every fastscore op is one), a Chrome trace, and a per-op table —
calls, time, bytes moved, GB/s, share of the phase — in which an op's time is that of its
outermost "fastscore::" label (a registered op's own dispatcher event nested inside it is
not counted again), and what is not a fastscore op (the network, the optimiser, Python) is
one "everything else" row.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

from fastscore import k_diffusion, losses, ops, samplers
from fastscore.sde import VESDE, geometric_sigmas

PREFIX = "fastscore::"


class SmallConvScoreNet(torch.nn.Module):
    """s(x, sigma) = conv(x) / sigma: three 3x3 convolutions, a CIFAR-shaped toy."""

    def __init__(self, channels: int = 3, hidden: int = 32):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(channels, hidden, 3, padding=1), torch.nn.SiLU(),
                                       torch.nn.Conv2d(hidden, hidden, 3, padding=1), torch.nn.SiLU(),
                                       torch.nn.Conv2d(hidden, channels, 3, padding=1))

    def forward(self, x, sigma):
        return self.net(x) / torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)


VE = dict(sigma_min=0.01, sigma_max=10.0)


def gaussian_score(x, t):
    """The exact score of N(0, I) data under the VE SDE: -x / (1 + sigma(t)^2)."""
    sigma = VE["sigma_min"] * (VE["sigma_max"] / VE["sigma_min"]) ** t
    return -x / (1 + sigma.reshape(-1, *([1] * (x.dim() - 1))) ** 2)


def outermost_ops(events) -> list:
    """The fastscore:: events that no other fastscore:: event encloses."""
    out = []
    for e in events:
        if not e.name.startswith(PREFIX):
            continue
        parent, nested = e.cpu_parent, False
        while parent is not None:
            if parent.name.startswith(PREFIX):
                nested = True
                break
            parent = parent.cpu_parent
        if not nested:
            out.append(e)
    return out


def op_table(prof, byte_log, wall_s: float) -> list[dict]:
    """Rows {op, calls, time_s, bytes, GBps, share} of one profiled phase, by time."""
    stats = defaultdict(lambda: {"calls": 0, "time_s": 0.0, "device_s": 0.0, "bytes": None})
    for e in outermost_ops(prof.events()):
        s = stats[e.name]
        s["calls"] += 1
        s["time_s"] += e.cpu_time_total / 1e6
        s["device_s"] += getattr(e, "device_time_total", 0.0) / 1e6
    for label, nbytes in byte_log:
        if label in stats:  # (a label set in C++, a backward node's, logs no bytes)
            stats[label]["bytes"] = (stats[label]["bytes"] or 0) + nbytes
    rows = []
    for name, s in stats.items():
        rows.append(dict(op=name[len(PREFIX):], **s, GBps=s["bytes"] / s["time_s"] / 1e9 if s["time_s"] and s["bytes"] else None,
                         share=s["time_s"] / wall_s))
    rows.sort(key=lambda r: -r["time_s"])
    other = max(0.0, wall_s - sum(r["time_s"] for r in rows))
    rows.append(dict(op="everything else (network, optimiser, Python)", calls=None, time_s=other, device_s=0.0,
                     bytes=None, GBps=None, share=other / wall_s))
    return rows


def profile_phase(fn, activities):
    """Runs fn once to warm up, then once under the profiler with the byte log installed."""
    fn()
    ops.BYTES_LOG = []
    try:
        with torch.profiler.profile(activities=activities) as prof:
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        log = ops.BYTES_LOG
    finally:
        ops.BYTES_LOG = None
    return prof, log, wall


def phases(size: tuple, steps: int, device):
    """(name, fn) of the profiled phases: a PC sampler run, a k-diffusion run, a training step."""
    sde = VESDE(N=steps, **VE)
    sigmas = geometric_sigmas(1.0, 0.01, 10)
    karras = k_diffusion.get_sigmas_karras(steps, 0.02, 10.0, device=device)
    torch.manual_seed(0)
    model = SmallConvScoreNet(size[1]).to(device) if len(size) == 4 else None
    net = model if model is not None else (lambda x, sigma: -x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4) if model is not None else None
    x = torch.randn(size, device=device)
    denoiser = lambda x, sigma: x / (1 + sigma.reshape(-1, *([1] * (x.dim() - 1))) ** 2)  # noqa: E731

    def train_step():
        loss = losses.anneal_dsm(net, x, sigmas, seed=1)
        if opt is not None:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return [
        (f"pc_sample (VE), {steps} steps (reverse diffusion + Langevin), exact score",
         lambda: samplers.pc_sample(gaussian_score, sde, size, seed=1, device=device)),
        (f"k_diffusion.sample_euler_ancestral, {steps - 1} steps, analytic denoiser",
         lambda: k_diffusion.sample_euler_ancestral(denoiser, x * 10.0, karras, seed=2)),
        ("training step: anneal_dsm + backward + Adam, " + ("3-conv net" if model is not None else "no network"),
         train_step),
    ]


def run(out: str = "fastscore_trace.json", size: str = "64x3x32x32", steps: int = 50) -> list:
    """Profiles every phase, writes one Chrome trace per phase (out, with the phase number
    before the extension), prints the tables; returns [(phase, rows, trace path)]."""
    shape = tuple(int(s) for s in size.split("x"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    from fastscore import backends

    print(f"fastscore profile on {device} ({torch.get_num_threads()} threads), fp32 {size}, backend "
          f"{backends.resolve(device)}; time = the op's outermost label, CPU side (+ device time on CUDA)")
    results = []
    stem, dot, ext = out.rpartition(".")
    for k, (name, fn) in enumerate(phases(shape, steps, device)):
        grad = name.startswith("training")
        with torch.enable_grad() if grad else torch.no_grad():
            prof, log, wall = profile_phase(fn, activities)
        path = f"{stem}.{k}.{ext}" if dot else f"{out}.{k}"
        prof.export_chrome_trace(path)
        rows = op_table(prof, log, wall)
        results.append((name, rows, path))
        print(f"\n{name}: {wall * 1e3:.1f} ms (profiled)  trace: {path}")
        print(f"  {'op':46s} {'calls':>6s} {'time ms':>9s} {'us/call':>8s} {'MB moved':>9s} {'GB/s':>7s} {'share':>6s}")
        for r in rows:
            calls = "" if r["calls"] is None else str(r["calls"])
            per = "" if not r["calls"] else f"{r['time_s'] / r['calls'] * 1e6:.1f}"
            mb = "" if r["bytes"] is None else f"{r['bytes'] / 1e6:.1f}"
            gbps = "" if r["GBps"] is None else f"{r['GBps']:.2f}"
            print(f"  {r['op']:46s} {calls:>6s} {r['time_s'] * 1e3:9.2f} {per:>8s} {mb:>9s} {gbps:>7s} "
                  f"{r['share']:6.1%}")
    return results
