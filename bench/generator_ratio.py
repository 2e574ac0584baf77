"""Each fused cpp op against its noise: the op and the noise stream alone at the same size
(`fastscore._C.fill_noise_` into a preallocated buffer) timed in alternating batches in
one process, so the VM's drift between minutes cancels out of the ratio (the pytest
suite's t/gen column divides rows timed minutes apart). Also the eager Langevin line
(`x + eps * s + sqrt(2 eps) * randn_like(x)`) against `langevin_step_`, alternated too.

    python bench/generator_ratio.py [ROOT]          # ROOT: a checkout to import (A/B runs)

2 threads, fp32, median of 25 alternations; prints op µs / generator µs = ratio per size,
and each op over max(generator, memory) — the issue's yardstick — where memory is the op's
bytes per element (BYTES) at the streaming rate of this size and run: the update with its
noise given (`langevin_step_(..., noise=z)`: reads x, score, z, writes x, 16 B/element).
The corrector with batch-mean norms cannot start its update before every row's norm is
known, so it costs at least the generator (pass 1 draws z and sums the squares) plus that
update (pass 2 reads the kept z): its row also shows op / (generator + update).
"""

from __future__ import annotations

import itertools
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]).resolve()
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import fastscore  # noqa: E402
from fastscore import backends, ops  # noqa: E402

# 256x3x8x8: rows of 192, reduced many rows per call (row_reduce.h's short-row path);
# 262144x2: a large 2-D batch, where per-row work (sums, square roots) weighs most.
SIZES = ((4096, 2), (262144, 2), (256, 3, 8, 8), (64, 3, 32, 32), (16, 3, 256, 256))
ROUNDS = 25
# fp32 bytes each op moves per element: reads and writes of x, score, kept noise.
BYTES = {"langevin_step_": 12, "step_": 12, "perturb": 8, "corrector": 24, "dsm_loss": 4}


def batch(fn, inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def alternated(f, g, inner: int) -> tuple[float, float]:
    """Median seconds per call of f and of g, timed in alternating batches."""
    f()
    g()
    a, b = [], []
    for _ in range(ROUNDS):
        a.append(batch(f, inner))
        b.append(batch(g, inner))
    return statistics.median(a), statistics.median(b)


def main() -> int:
    if not backends.HAS_EXTENSION:
        print(f"fastscore._C is not built ({backends.EXTENSION_ERROR})", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    c = backends._C
    print(f"fastscore from {Path(fastscore.__file__).parent} on {backends.cpu_name()}; noise generator {c.cpu_kernel()}, "
          f"element loops {c.cpu_loops() if hasattr(c, 'cpu_loops') else '?'}; 2 threads")
    seeds = itertools.cycle(range(1, 1000))
    for shape in SIZES:
        n = math.prod(shape)
        inner = max(1, int(2e6 / n)) if n > 10000 else 100
        x, s = torch.randn(shape), torch.randn(shape)
        buf = torch.empty(n)

        def generator():
            c.fill_noise_(buf, 0, None, next(seeds), None, 0)

        rows = {
            "langevin_step_": lambda: ops.langevin_step_(x, s, 1e-4, seed=next(seeds)),
            "step_": lambda: ops.step_(x, s, 0.999, 1e-3, 0.05, seed=next(seeds)),
            "perturb": lambda: ops.perturb(x, 0.5, seed=next(seeds)),
            "corrector": lambda: ops.langevin_corrector_(x, s, 0.16, seed=next(seeds)),
            "dsm_loss": lambda: ops.dsm_loss(s, 0.5, seed=next(seeds)),
        }
        z = torch.randn(shape)
        stream, _ = alternated(lambda: ops.langevin_step_(x, s, 1e-4, noise=z), generator, inner)
        rate = 16 * n / stream  # bytes per second this run streams at this size
        line = [f"{'x'.join(map(str, shape)):13s} stream {rate / 1e9:.0f} GB/s"]
        for name, fn in rows.items():
            a, b = alternated(fn, generator, inner)
            bound = max(b, BYTES[name] * n / rate)
            cell = f"{name} {a * 1e6:.1f}/{b * 1e6:.1f}={a / b:.2f} (/max(gen,mem) {a / bound:.2f}"
            if name == "corrector":  # its floor: pass 1 draws z, pass 2 is the update with z given
                cell += f", /(gen+update) {a / (b + stream):.2f}"
            line.append(cell + ")")
        e, f = alternated(lambda: x + 1e-4 * s + math.sqrt(2e-4) * torch.randn_like(x),
                          lambda: ops.langevin_step_(x, s, 1e-4, seed=next(seeds)), inner)
        line.append(f"eager/fused {e * 1e6:.0f}/{f * 1e6:.0f}={e / f:.1f}x")
        print("  ".join(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
