"""python -m fastscore {demo, info, profile, bench, gpucheck}."""

from __future__ import annotations

import argparse
import os
import platform
import sys

import torch


def info() -> None:
    """Versions, what was built, and which backend serves each op and why the others
    cannot (like xformers.info)."""
    from fastscore import backends, ops

    print(f"fastscore  {__import__('fastscore').__version__}")
    print(f"cpu        {backends.cpu_name()}")
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
              f"{torch.backends.cpu.get_cpu_capability()}); noise generator: {backends._C.cpu_kernel()}, element "
              f"loops: {backends._C.cpu_loops()} (FASTSCORE_CPU_KERNEL=avx512|avx2|scalar lowers both); "
              f"CUDA kernels: {backends.extension_has_cuda()}")
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastscore")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="train a score network on 2-D data and sample it, fused vs eager")
    p_demo.add_argument("--train-steps", type=int, default=1500, help="Adam steps per dataset")
    p_demo.add_argument("--steps", type=int, default=20,
                        help="sampler steps scale: Langevin steps per noise level (PC: 10x, Euler ancestral: 2x)")
    p_demo.add_argument("--samples", type=int, default=4096)
    p_demo.add_argument("--seed", type=int, default=0)
    p_demo.add_argument("--backend", default="auto", help="auto, cpp, reference or triton")
    p_demo.add_argument("--datasets", default="mixture,ring", help="comma-separated: mixture, ring")
    p_demo.add_argument("--out", "--png", dest="png", default="demo.png", help="the PNG ('' for none)")
    p_demo.add_argument("--no-progress", action="store_true")
    sub.add_parser("info", help="versions, build, backend per op")
    p_prof = sub.add_parser("profile", help="a sampler run and a training step under torch.profiler: table + trace")
    p_prof.add_argument("--out", default="fastscore_trace.json", help="Chrome trace path (one per phase)")
    p_prof.add_argument("--size", default="64x3x32x32")
    p_prof.add_argument("--steps", type=int, default=50)
    p_bench = sub.add_parser("bench", help="the benchmark suite (pytest-benchmark): table, JSON, PNG")
    p_bench.add_argument("--out", default="bench/results", help="folder for bench.json")
    p_bench.add_argument("--smoke", action="store_true", help="every benchmark once, untimed")
    p_bench.add_argument("-k", dest="select", default=None, help="pytest -k expression")
    p_bench.add_argument("--compare", default=None, metavar="OLD.json", help="flag rows slower than this run")
    p_bench.add_argument("--threshold", type=float, default=0.10, help="regression threshold (0.10 = 10%%)")
    p_gpu = sub.add_parser("gpucheck", help="on a CUDA machine: build, check every backend and capture, time")
    p_gpu.add_argument("--out", default="gpucheck", help="folder for gpucheck.json and gpucheck.md")
    p_gpu.add_argument("--dry-run", action="store_true", help="the same code paths on the CPU, small sizes")
    p_gpu.add_argument("--no-build", action="store_true", help="do not build the CUDA extension")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from fastscore import demo

        demo.run(train_steps=args.train_steps, samples=args.samples, steps=args.steps, seed=args.seed,
                 backend=args.backend, png=args.png or None, datasets=tuple(args.datasets.split(",")),
                 progress=not args.no_progress)
    elif args.command == "info":
        info()
    elif args.command == "gpucheck":
        from fastscore import gpucheck

        return gpucheck.run(args.out, dry_run=args.dry_run, build=not args.no_build,
                            argv=sys.argv[2:] if argv is None else argv[1:])
    elif args.command == "bench":
        from fastscore import bench

        return bench.run(args.out, smoke=args.smoke, select=args.select, compare_to=args.compare,
                         threshold=args.threshold)
    else:
        from fastscore import profile

        profile.run(args.out, args.size, args.steps)
    return 0


def run_cli() -> int:
    """main(), quiet when the reader of stdout leaves early (`python -m fastscore info | head`)."""
    try:
        code = main()
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # exit's flush writes nowhere
        return 1


if __name__ == "__main__":
    sys.exit(run_cli())
