"""``python -m fastscore gpucheck``: every answer a CUDA machine can give, in one run.

1. build: the CUDA extension for the torch found there (``setup.py build_ext --inplace``
   with FASTSCORE_CUDA=1 and the GPU's arch), when the extension there has no CUDA kernels;
   then the check re-runs itself in a fresh process that imports the new build.
2. checks (each pass/fail, with the reason): every backend on the device against the
   reference on the same device — bit for bit where SPEC promises it (noise, the fused
   updates, all dtypes), to rounding where the op reduces — and the device's noise equal to
   the CPU's; ``samplers.capture`` of every capturable sampler (fastscore's and the
   k-diffusion drop-ins) equal to the eager sampler for seeds 1, 2, 1 with fresh noise per
   seed; torch.compile of a sampler run: one graph for three seeds, no CPU tensor input.
3. timings (CUDA events after warm-up): each op fused vs eager PyTorch vs torch.compile,
   and the per-step cost of pc_sample, annealed_langevin and Euler ancestral at
   64x3x32x32 and 16x3x256x256 with a zero-cost score and a small conv net: the peers'
   eager loops (fastscore/_peers.py) vs fastscore eager vs fastscore captured.

Writes gpucheck.json and gpucheck.md into --out and prints the markdown; exits 1 when a
check failed, 2 when there is no GPU. ``--dry-run`` runs the same code paths on the CPU
(small sizes, perf_counter timing, no build, no torch.compile timings): CI runs it so
that this command cannot rot.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

import fastscore
from fastscore import _peers as peers
from fastscore import backends, ops, samplers
from fastscore import k_diffusion as K
from fastscore import sde as S

ROOT = Path(__file__).resolve().parents[1]
FULL_SIZES = {"64x3x32x32": (64, 3, 32, 32), "16x3x256x256": (16, 3, 256, 256)}
DRY_SIZES = {"4x3x8x8": (4, 3, 8, 8)}


class Report:
    def __init__(self, device: str, dry_run: bool):
        self.device, self.dry_run = device, dry_run
        self.env, self.build, self.checks, self.ops, self.samplers, self.notes = {}, {}, [], [], [], []
        self.started = time.perf_counter()

    def check(self, name: str, fn) -> bool:
        """Run one check: fn() returns a detail string (pass) or raises (fail, with the reason)."""
        try:
            detail, ok = fn(), True
        except Exception as e:  # a check must report, never stop the run
            detail, ok = f"{type(e).__name__}: {e}".strip()[:400], False
            if os.environ.get("FASTSCORE_GPUCHECK_TRACEBACK"):
                traceback.print_exc()
        self.checks.append({"name": name, "ok": ok, "detail": detail or ""})
        print(f"  [{'ok' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}", flush=True)
        return ok

    @property
    def failed(self):
        return [c for c in self.checks if not c["ok"]]

    def to_json(self) -> dict:
        return {"device": self.device, "dry_run": self.dry_run, "env": self.env, "build": self.build,
                "checks": self.checks, "ops": self.ops, "samplers": self.samplers, "notes": self.notes,
                "elapsed_s": time.perf_counter() - self.started}


# --------------------------------------------------------------------------- environment and build


def environment(device: str) -> dict:
    env = {"fastscore": fastscore.__version__, "python": platform.python_version(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "extension": backends.HAS_EXTENSION,
           "extension_cuda": backends.extension_has_cuda(), "backends": backends.available_backends(device),
           "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                   memory_GiB=round(props.total_memory / 2 ** 30, 1))
    return env


def build_cuda_extension(report: Report) -> bool:
    """Build fastscore._C with the CUDA kernels for this torch and GPU, in place. True when a
    build ran (the caller then re-runs in a fresh process to import it)."""
    if backends.extension_has_cuda():
        report.build = {"ran": False, "why": "the extension already has CUDA kernels"}
        return False
    major, minor = torch.cuda.get_device_capability(0)
    env = dict(os.environ, FASTSCORE_CUDA="1", TORCH_CUDA_ARCH_LIST=f"{major}.{minor}",
               MAX_JOBS=str(os.cpu_count() or 4))
    cmd = [sys.executable, "setup.py", "build_ext", "--inplace"]
    print(f"building the CUDA extension: {' '.join(cmd)} (TORCH_CUDA_ARCH_LIST={major}.{minor})", flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    report.build = {"ran": True, "seconds": round(time.perf_counter() - t0, 1), "returncode": done.returncode,
                    "tail": (done.stdout + done.stderr)[-2000:]}
    if done.returncode != 0:
        print(report.build["tail"], file=sys.stderr)
        report.checks.append({"name": "build the CUDA extension", "ok": False, "detail": "setup.py failed"})
        return False
    return True


# --------------------------------------------------------------------------- checks


_BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
         torch.bfloat16: torch.int16}


def _equal_bits(got, want):
    if got.dtype != want.dtype or got.shape != want.shape:
        raise AssertionError(f"dtype/shape {got.dtype}{tuple(got.shape)} vs {want.dtype}{tuple(want.shape)}")
    bits = _BITS.get(got.dtype)
    same = torch.equal(got, want) if bits is None else torch.equal(got.contiguous().view(bits),
                                                                 want.contiguous().view(bits))
    if not same:
        raise AssertionError(f"not bitwise: max |diff| {(got.double() - want.double()).abs().max().item():.3g}")  # noqa: E501
    return "bitwise"


def _close(got, want, rtol):
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol)
    diff = (got.double() - want.double()).abs()
    return f"max |diff| {diff.max().item() if diff.numel() else 0:.2g} (rtol {rtol:g})"


def _inputs(shape, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(device=device, dtype=dtype) for _ in range(4)]


def op_cases(device: str, shape):
    """(name, dtype, fn(), exact) per op: fn runs the op under the current backend on fresh copies
    of fixed inputs (per-sample coefficients and a device seed tensor where the op takes
    them) and returns its outputs."""
    rows = shape[0]
    seed, offset = torch.tensor(1234, device=device), torch.tensor(3, device=device)
    per = torch.linspace(0.5, 1.5, rows, device=device, dtype=torch.float64)
    cases = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        tag = str(dtype).replace("torch.", "")

        def step(dtype=dtype):
            x, s, _, _ = _inputs(shape, device, dtype)
            mean = torch.empty_like(x)
            ops.step_(x, s, per, 0.01, 0.3, seed=seed, offset=offset, x_mean=mean)
            return x, mean

        def langevin(dtype=dtype):
            x, s, _, _ = _inputs(shape, device, dtype)
            return (ops.langevin_step_(x, s, 1e-3, seed=seed),)

        def combine(dtype=dtype):
            x, y1, y2, y3 = _inputs(shape, device, dtype)
            out2 = torch.empty_like(x)
            out = ops.combine(x, [y1, y2, y3], [0.9, per, -0.2, 0.1, 0.05], seed=seed, offset=offset, out2=out2,
                              coefs2=[0.0, 0.0, 0.0, 0.0, 1.0])
            return out, out2

        def perturb(dtype=dtype):
            x, _, _, _ = _inputs(shape, device, dtype)
            return (ops.perturb(x, per, seed=seed, offset=offset),)

        cases += [(f"step_ {tag}", dtype, step, True), (f"langevin_step_ {tag}", dtype, langevin, True),
                  (f"combine (3 ys, out2) {tag}", dtype, combine, True), (f"perturb {tag}", dtype, perturb, True)]

    def corrector():
        x, s, _, _ = _inputs(shape, device, torch.float32)
        return (ops.langevin_corrector_(x, s, 0.16, seed=seed, alpha=per),)

    def dsm():
        _, s, _, _ = _inputs(shape, device, torch.float32)
        return (ops.dsm_loss(s, per, seed=seed, offset=offset),)

    def sliced():
        _, s, _, _ = _inputs(shape, device, torch.float32)
        v = ops.probes((rows, 2) + tuple(shape[1:]), seed, device=device)
        jv = torch.randn((rows, 2) + tuple(shape[1:]), generator=torch.Generator().manual_seed(5)).to(device)
        return (ops.sliced_score_terms(s, jv, v),)

    def labels():  # NCSN's 232 levels, counters straddling 2**32
        return (ops.philox_labels(seed, 2**32 - 3, rows, 232, device=device),)

    f32 = torch.float32
    return cases + [("langevin_corrector_ float32", f32, corrector, False), ("dsm_loss float32", f32, dsm, False),
                    ("sliced_score_terms float32", f32, sliced, False), ("philox_labels", f32, labels, True)]


def check_ops(report: Report, shapes):
    device = report.device
    for backend in [b for b in backends.available_backends(device) if b != "reference"]:
        for shape in shapes:
            label = "x".join(map(str, shape))

            def noise_equals_cpu(backend=backend, shape=shape):
                with fastscore.use_backend(backend):
                    got = ops.noise(shape, seed=2 ** 63 + 7, offset=5, device=device)
                with fastscore.use_backend("reference"):
                    want = ops.noise(shape, seed=2 ** 63 + 7, offset=5)
                return _equal_bits(got.cpu(), want)

            report.check(f"{backend}: noise {label} equals the CPU stream", noise_equals_cpu)
            for name, dtype, fn, exact in op_cases(device, shape):
                if backends.not_supported_reasons(backend, device, dtype):
                    continue  # e.g. bf16 under Triton's CPU interpreter: the backend says why in env
                def compare(fn=fn, exact=exact, backend=backend):
                    with fastscore.use_backend(backend):
                        got = fn()
                    with fastscore.use_backend("reference"):
                        want = fn()
                    details = [_equal_bits(g, w) if exact else _close(g, w, 1e-5) for g, w in zip(got, want)]
                    return details[0]

                report.check(f"{backend}: {name} {label} vs reference", compare)


def denoiser(x, sigma):
    s = sigma.reshape((-1,) + (1,) * (x.dim() - 1))
    return x * (0.5 / (0.5 + s * s))


def gaussian_score(x, t):
    tt = t.reshape((-1,) + (1,) * (x.dim() - 1))
    return -x / (0.5 + tt * tt)


def capturable_runs(device: str, shape):
    x0 = torch.zeros(shape, device=device)
    sigmas = torch.tensor([3.0, 1.0, 0.3], dtype=torch.float64, device=device)
    ve, vp = S.VESDE(sigma_max=5.0, N=8), S.VPSDE(beta_max=5.0, N=8)
    kw = {"device": device}
    k_sigmas = K.get_sigmas_karras(6, 0.05, 3.0, device=device)
    runs = [("langevin", samplers.langevin, (gaussian_score, x0, 0.05, 6), {}),
            ("annealed_langevin", samplers.annealed_langevin, (gaussian_score, x0, sigmas, 2, 0.01), {}),
            ("pc_sample", samplers.pc_sample, (gaussian_score, vp, shape), kw),
            ("pc_sample VE ald", samplers.pc_sample, (gaussian_score, ve, shape),
             {"predictor": "ancestral", "corrector": "ald", **kw}),
            ("euler_maruyama", samplers.euler_maruyama, (gaussian_score, vp, shape), kw),
            ("ode_sample heun", samplers.ode_sample, (gaussian_score, vp, shape), {"method": "heun", "n_steps": 4, **kw})]
    for name in ("sample_euler_ancestral", "sample_dpmpp_2m", "sample_dpmpp_sde", "sample_dpmpp_3m_sde", "sample_heun"):
        extra = {"s_churn": 1.0} if name == "sample_heun" else {}
        runs.append((f"k_diffusion.{name}", getattr(K, name), (denoiser, x0 + 3.0, k_sigmas), {"disable": True, **extra}))
    return runs


def check_capture(report: Report, shape):
    for name, sampler, args, kwargs in capturable_runs(report.device, shape):
        def replay(sampler=sampler, args=args, kwargs=kwargs, name=name):
            run = samplers.capture(sampler, *args, **kwargs)
            for seed in (1, 2, 1):
                got, want = run(seed).clone(), sampler(*args, **kwargs, seed=seed)
                if not torch.equal(got, want):
                    raise AssertionError(f"seed {seed}: max |diff| {(got - want).abs().max().item():.3g}")
            if name != "k_diffusion.sample_dpmpp_2m" and torch.equal(run(1), run(2)):
                raise AssertionError("seeds 1 and 2 gave the same sample: the replay froze the noise")
            return f"{'CUDA graph' if report.device == 'cuda' else 'eager'} replay == eager, seeds 1, 2, 1"

        report.check(f"capture: {name}", replay)


def check_compile(report: Report, shape):
    import torch._dynamo.testing

    device = report.device
    x0 = torch.zeros(shape, device=device)

    def run(seed):
        return samplers.langevin(gaussian_score, x0, 0.05, 4, seed=seed)

    def compiled_once():
        cpu_inputs = []

        def backend(gm, example_inputs):
            cpu_inputs.extend(t for t in example_inputs if isinstance(t, torch.Tensor) and t.device.type == "cpu")
            return gm.forward

        run(torch.tensor(0, device=device))
        torch._dynamo.reset()
        counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
        fn = torch.compile(run, fullgraph=True, backend=counter)
        for seed in (1, 2, 2 ** 40 + 3):
            s = torch.tensor(seed, device=device)
            if not torch.equal(fn(s), run(s)):
                raise AssertionError(f"seed {seed}: compiled != eager")
        if counter.frame_count != 1:
            raise AssertionError(f"{counter.frame_count} compiles for 3 seeds")
        if device != "cpu" and cpu_inputs:
            raise AssertionError(f"{len(cpu_inputs)} CPU tensor inputs in the graph")
        return "fullgraph, 1 compile for 3 seeds, no CPU tensor input"

    report.check("torch.compile: langevin run with a tensor seed", compiled_once)


# --------------------------------------------------------------------------- timing


class Timer:
    """Seconds per call of fn: CUDA events on the GPU (after warm-up), perf_counter on CPU."""

    def __init__(self, device: str, budget_s: float):
        self.device, self.budget_s = device, budget_s

    def __call__(self, fn, warmup: int = 3) -> float:
        for _ in range(warmup):
            fn()
        self._sync()
        t0 = time.perf_counter()
        fn()
        self._sync()
        once = max(time.perf_counter() - t0, 1e-6)
        n = max(1, min(1000, int(self.budget_s / once)))
        if self.device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / n
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best = min(best, (time.perf_counter() - t0) / n)
        return best

    def _sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()


def time_ops(report: Report, sizes, timer: Timer, compile_budget_s: float):
    device = report.device
    compile_spent = 0.0
    for size, shape in sizes.items():
        g = torch.Generator().manual_seed(0)
        x, s, y = (torch.randn(shape, generator=g).to(device) for _ in range(3))
        out = torch.empty_like(x)
        n = x.numel()
        rows = {
            "langevin_step_": (lambda: ops.langevin_step_(x, s, 1e-3, seed=7),
                               lambda: x + 1e-3 * s + math.sqrt(2e-3) * torch.randn_like(x), 12 * n),
            "step_": (lambda: ops.step_(x, s, 0.999, 1e-3, 0.05, seed=7),
                      lambda: 0.999 * x + 1e-3 * s + 0.05 * torch.randn_like(x), 12 * n),
            "perturb": (lambda: ops.perturb(x, 0.5, seed=7), lambda: x + 0.5 * torch.randn_like(x), 8 * n),
            "noise": (lambda: ops.noise(shape, seed=7, device=device), lambda: torch.randn(shape, device=device), 4 * n),
            "combine (DPM++ 2M)": (lambda: ops.combine(x, [s, y], [0.9, 0.05, 0.05, 0.0], out=out),
                                   lambda: 0.9 * x + 0.05 * s + 0.05 * y, 16 * n),
            "langevin_corrector_": (lambda: ops.langevin_corrector_(x, s, 0.16, seed=7),
                                    lambda: peers.langevin_corrector(None, lambda a, b: s, x,
                                                                     torch.ones(shape[0], device=device), 0.16)[0],
                                    16 * n),
        }
        for op, (fused, eager, nbytes) in rows.items():
            row = {"op": op, "size": size, "bytes": nbytes}
            with torch.no_grad():
                row["fused_us"] = timer(fused) * 1e6
                row["eager_us"] = timer(eager) * 1e6
                if compile_budget_s > compile_spent:
                    t0 = time.perf_counter()
                    try:
                        compiled = torch.compile(eager, dynamic=False)
                        compiled()
                        row["compile_us"] = timer(compiled) * 1e6
                    except Exception as e:  # inductor may be missing a toolchain; a timing is not a check
                        row["compile_error"] = f"{type(e).__name__}: {e}"[:200]
                    compile_spent += time.perf_counter() - t0
            row["fused_GBps"] = nbytes / row["fused_us"] / 1e3
            report.ops.append(row)
            print(f"  {op:22s} {size:13s} fused {row['fused_us']:9.1f} us  eager {row['eager_us']:9.1f} us  "
                  f"compile {row.get('compile_us', float('nan')):9.1f} us", flush=True)
    if 0 < compile_budget_s <= compile_spent:
        report.notes.append(f"torch.compile rows stopped after {compile_spent:.0f} s (budget {compile_budget_s:.0f} s)")


class ZeroCost:
    """score_fn(x, t) / model(x, sigma) returning one preallocated tensor."""

    def __init__(self, shape, device):
        self.out = torch.randn(shape, generator=torch.Generator().manual_seed(11)).to(device)

    def __call__(self, x, t, **kwargs):
        return self.out


def conv_net(device):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.SiLU(),
                              torch.nn.Conv2d(32, 3, 3, padding=1)).to(device).eval()
    return lambda x, t, **kwargs: net(x)


def sampler_rows(device, shape, score, steps):
    """(sampler, provider, fn) per row: the peers' eager loop, fastscore eager, captured."""
    x0 = torch.randn(shape, generator=torch.Generator().manual_seed(3)).to(device)
    levels = torch.exp(torch.linspace(math.log(1.0), math.log(0.01), 5))
    each = max(1, steps // 5)
    ve = S.VESDE(sigma_min=0.01, sigma_max=50.0, N=steps)
    peer_ve = peers.VESDE(0.01, 50.0, steps)
    k_sigmas = K.get_sigmas_karras(steps, 0.03, 80.0, device=device)
    runs = {
        "pc_sample (VE, RD + Langevin)": (
            lambda: peers.pc_sampler(score, peer_ve, shape, 0.16, 1, 1e-3, x=x0 * 50.0),
            samplers.pc_sample, (score, ve, shape), {"x_init": x0 * 50.0, "snr": 0.16}, steps),
        "annealed_langevin": (
            lambda: peers.anneal_langevin_dynamics(score, x0, levels.tolist(), each, 2e-5),
            samplers.annealed_langevin, (score, x0, levels.to(device), each, 2e-5), {}, 5 * each),
        "euler_ancestral (k-diffusion)": (
            lambda: peers.sample_euler_ancestral(score, x0 * 80.0, k_sigmas),
            K.sample_euler_ancestral, (score, x0 * 80.0, k_sigmas), {"disable": True}, steps),
    }
    for name, (peer, sampler, args, kwargs, n) in runs.items():
        run = samplers.capture(sampler, *args, **kwargs)
        yield name, n, {"peer eager": peer, "fastscore eager": lambda s=sampler, a=args, k=kwargs: s(*a, **k, seed=1),
                        "fastscore captured": lambda r=run: r(1)}


def time_samplers(report: Report, sizes, timer: Timer, steps: int):
    device = report.device
    for size, shape in sizes.items():
        for score_name, score in (("zero-cost", ZeroCost(shape, device)), ("conv net", conv_net(device))):
            for name, n, fns in sampler_rows(device, shape, score, steps):
                row = {"sampler": name, "size": size, "score": score_name, "steps": n}
                with torch.no_grad():
                    for provider, fn in fns.items():
                        row[f"{provider} us/step"] = timer(fn, warmup=2) * 1e6 / n
                report.samplers.append(row)
                print(f"  {name:32s} {size:13s} {score_name:9s} " + "  ".join(
                    f"{p} {row[f'{p} us/step']:8.1f}" for p in fns) + " us/step", flush=True)


# --------------------------------------------------------------------------- report


def markdown(report: Report) -> str:
    e = report.env
    lines = [f"# fastscore gpucheck ({'dry run on the CPU' if report.dry_run else e.get('gpu', 'cuda')})", "",
             f"fastscore {e['fastscore']}, torch {e['torch']} (CUDA {e['torch_cuda']}), triton {e['triton']}, "
             f"python {e['python']}; backends on {report.device}: {', '.join(e['backends'])}; "
             f"extension CUDA kernels: {e['extension_cuda']}", ""]
    if report.build:
        lines += [f"build: {json.dumps({k: v for k, v in report.build.items() if k != 'tail'})}", ""]
    failed = report.failed
    lines += [f"## Checks: {len(report.checks) - len(failed)} of {len(report.checks)} passed", ""]
    lines += [f"- FAIL {c['name']}: {c['detail']}" for c in failed] or ["all passed"]
    if report.ops:
        lines += ["", "## Ops (µs per call)", "", "| op | size | fused | eager | compile | fused GB/s | x eager |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in report.ops:
            lines.append(f"| {r['op']} | {r['size']} | {r['fused_us']:.1f} | {r['eager_us']:.1f} | "
                         f"{r.get('compile_us', float('nan')):.1f} | {r['fused_GBps']:.0f} | "
                         f"{r['eager_us'] / r['fused_us']:.1f} |")
    if report.samplers:
        lines += ["", "## Samplers (µs per step)", "",
                  "| sampler | size | score | peer eager | fastscore eager | fastscore captured | x peer (captured) |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for r in report.samplers:
            lines.append(f"| {r['sampler']} | {r['size']} | {r['score']} | {r['peer eager us/step']:.1f} | "
                         f"{r['fastscore eager us/step']:.1f} | {r['fastscore captured us/step']:.1f} | "
                         f"{r['peer eager us/step'] / r['fastscore captured us/step']:.1f} |")
    lines += [""] + [f"note: {n}" for n in report.notes]
    lines.append(f"elapsed {time.perf_counter() - report.started:.0f} s")
    return "\n".join(lines) + "\n"


def run(out: str = "gpucheck", dry_run: bool = False, build: bool = True, argv=()) -> int:
    device = "cpu" if dry_run else "cuda"
    if not dry_run and not torch.cuda.is_available():
        print("gpucheck: no CUDA device here (torch.cuda.is_available() is False); "
              "python -m fastscore gpucheck --dry-run runs the same code paths on the CPU", file=sys.stderr)
        return 2
    report = Report(device, dry_run)
    if not dry_run and build and build_cuda_extension(report):
        # import the new extension in a fresh process (a loaded .so cannot be replaced)
        return subprocess.call([sys.executable, "-m", "fastscore", "gpucheck", *argv, "--no-build"], cwd=ROOT)
    report.env = environment(device)
    print(f"gpucheck on {report.env.get('gpu', 'the CPU (dry run)')}: backends {report.env['backends']}", flush=True)
    sizes = DRY_SIZES if dry_run else FULL_SIZES
    print("checks: backends vs the reference", flush=True)
    check_ops(report, [(6, 5, 7), (0, 3)] + ([] if dry_run else [(64, 3, 32, 32)]))
    print("checks: capture", flush=True)
    check_capture(report, (6, 3, 2) if dry_run else (64, 3, 32, 32))
    if not dry_run:
        check_compile(report, (64, 3, 32, 32))
    else:
        report.notes.append("dry run: the torch.compile check runs in tests/test_capture.py; no compile timings")
    timer = Timer(device, budget_s=0.02 if dry_run else 0.2)
    print("timings: ops", flush=True)
    time_ops(report, sizes, timer, compile_budget_s=0.0 if dry_run else 150.0)
    print("timings: samplers", flush=True)
    time_samplers(report, sizes, timer, steps=3 if dry_run else 50)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "gpucheck.json").write_text(json.dumps(report.to_json(), indent=1))
    text = markdown(report)
    (Path(out) / "gpucheck.md").write_text(text)
    print(text)
    print(f"wrote {Path(out) / 'gpucheck.json'} and {Path(out) / 'gpucheck.md'}")
    return 1 if report.failed else 0
