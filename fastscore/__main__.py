"""python -m fastscore {demo, info, profile, gpucheck}."""

from __future__ import annotations

import argparse
import platform
import sys

import torch


def info() -> None:
    """Versions, what was built, and which backend serves each op and why the others
    cannot (like xformers.info)."""
    from fastscore import backends, ops

    print(f"fastscore  {__import__('fastscore').__version__}")
    print(f"python     {platform.python_version()}  torch {torch.__version__}  "
          f"(CUDA {torch.version.cuda or 'none'}, GPU available: {torch.cuda.is_available()})")
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    print(f"triton     {triton_version}  (TRITON_INTERPRET={'1' if backends.triton_interpreting() else 'unset'})")
    print(f"extension  fastscore._C: {'built' if backends.HAS_EXTENSION else 'missing: ' + str(backends.EXTENSION_ERROR)}")
    if backends.HAS_EXTENSION:
        print(f"           CPU kernels: yes (threads {torch.get_num_threads()}, CPU capability "
              f"{torch.backends.cpu.get_cpu_capability()}); noise generator: {backends._C.cpu_kernel()} "
              f"(FASTSCORE_CPU_KERNEL=avx512|avx2|scalar lowers it); CUDA kernels: {backends.extension_has_cuda()}")
    print(f"selected   {backends.get_backend()}")
    for device in ("cpu", "cuda"):
        try:
            serving = backends.resolve(device)
        except RuntimeError as e:
            serving = f"none ({e})"
        print(f"{device:5s}      available {backends.available_backends(device)}")
        for op in (o for o in ops.__all__ if o != "derive_seed"):  # derive_seed is an int function
            print(f"           {op:22s} {serving} serves it")
        for b in backends.BACKENDS:
            reasons = backends.not_supported_reasons(b, device)
            if reasons:
                print(f"           {b:9s} cannot: {'; '.join(reasons)}")


def profile(out: str, size: str) -> None:
    """Runs every op under torch.profiler; writes a Chrome trace and prints a per-op table."""
    from fastscore import ops

    torch.set_num_threads(2)
    shape = tuple(int(s) for s in size.split("x"))
    x, s = torch.randn(shape), torch.randn(shape)
    calls = {
        "noise": lambda k: ops.noise(shape, seed=k),
        "step_": lambda k: ops.step_(x, s, 0.99, 0.01, 0.1, seed=k),
        "langevin_step_": lambda k: ops.langevin_step_(x, s, 1e-4, seed=k),
        "perturb": lambda k: ops.perturb(x, 0.5, seed=k),
    }
    for k, fn in enumerate(calls.values()):  # warm up
        fn(k)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        for k in range(20):
            for fn in calls.values():
                fn(k)
    prof.export_chrome_trace(out)
    # The Python-level range and the dispatcher's own event share a name; the outer
    # one (larger total) includes the inner, so keep one row per name.
    rows = {}
    for e in prof.key_averages():
        if e.key.startswith("fastscore::") and (e.key not in rows or e.cpu_time_total > rows[e.key].cpu_time_total):
            rows[e.key] = e
    rows = list(rows.values())
    print(f"per-op profile, {size} fp32, 20 calls each, backend {__import__('fastscore').backends.resolve(x.device)}")
    print(f"{'op':34s} {'calls':>6s} {'total ms':>10s} {'mean us':>9s}")
    for e in sorted(rows, key=lambda e: -e.cpu_time_total):
        print(f"{e.key:34s} {e.count:6d} {e.cpu_time_total / 1e3:10.2f} {e.cpu_time_total / e.count:9.1f}")
    print(f"trace written to {out} (open in chrome://tracing or Perfetto)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastscore")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="train and sample a score model of a 2-D mixture on fused kernels")
    p_demo.add_argument("--samples", type=int, default=8192)
    p_demo.add_argument("--train-steps", type=int, default=800)
    p_demo.add_argument("--steps", type=int, default=100, help="Langevin steps per noise level")
    p_demo.add_argument("--png", default="demo.png")
    sub.add_parser("info", help="versions, build, backend per op")
    p_prof = sub.add_parser("profile", help="per-op torch.profiler table and Chrome trace")
    p_prof.add_argument("--out", default="fastscore_trace.json")
    p_prof.add_argument("--size", default="64x3x32x32")
    p_gpu = sub.add_parser("gpucheck", help="on a CUDA machine: build, check every backend and capture, time")
    p_gpu.add_argument("--out", default="gpucheck", help="folder for gpucheck.json and gpucheck.md")
    p_gpu.add_argument("--dry-run", action="store_true", help="the same code paths on the CPU, small sizes")
    p_gpu.add_argument("--no-build", action="store_true", help="do not build the CUDA extension")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from fastscore import demo

        demo.run(n_samples=args.samples, n_steps_each=args.steps, train_steps=args.train_steps, png=args.png)
    elif args.command == "info":
        info()
    elif args.command == "gpucheck":
        from fastscore import gpucheck

        return gpucheck.run(args.out, dry_run=args.dry_run, build=not args.no_build,
                            argv=sys.argv[2:] if argv is None else argv[1:])
    else:
        profile(args.out, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
