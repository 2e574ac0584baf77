"""The CPU noise generator (csrc/cpu_stream_simd.h): explicit AVX-512 and AVX2 kernels and
the scalar definition (philox.h), chosen at run time, all giving the stream's bits.

* tests/cpu/test_stream.cpp, built here from csrc/, compares every kernel path this CPU can
  run against philox.h evaluated element by element: >= 10^8 normals, 10^8 words and 10^8
  Rademacher signs per path, over seeds 0 .. 2^64 - 1 and counter bases where the low
  counter word wraps inside a vector, at every alignment, and split into calls of every
  size (results independent of chunking); and the fused update kernels (stream_update:
  the noise combined with x and y inside the generator) against that loop written out, on
  >= 10^7 values per path, split and at every head / tail shape too;
* each path, forced with FASTSCORE_CPU_KERNEL in a fresh process, reproduces the torch
  reference through the ops (normals, signs, words, step_, the corrector, dsm_loss);
* every path gives the same corrector and DSM bits on long rows (the row sums' lane kernels);
* dsm_loss keeps the reference's bits under flush-to-zero without denormals-are-zero, where
  its fused residual would not (MXCSR set through a small C helper built here);
* no fused multiply-add, but the two exact uses, in the object code of the noise symbols or
  the ops' SIMD element loops (a path this CPU cannot run is still compiled into the
  extension, so this inspects it too).
"""

import os
import platform
import re
import shutil
import subprocess
import sys

import pytest

from fastscore import backends
from support import run_cpp_test

needs_ext = pytest.mark.skipif(not backends.HAS_EXTENSION, reason="fastscore._C not built")


def test_every_kernel_path_matches_the_definition(tmp_path):
    sources = ("stream_dispatch.cpp", "stream_scalar.cpp", "stream_avx2.cpp", "stream_avx512.cpp")
    stdout = run_cpp_test("test_stream", sources, tmp_path)
    paths = re.search(r"paths tested: (.*)", stdout).group(1).split()
    assert "scalar" in paths and len(paths) >= 2, paths  # the definition and at least one SIMD path
    for path in paths:  # >= 10^8 values of each kind per path
        counts = re.search(rf"\[{path}\] normals (\d+), words (\d+), signs (\d+), updates (\d+)", stdout).groups()
        assert all(int(c) >= 10**8 for c in counts[:3]) and int(counts[3]) >= 10**7, (path, counts)


CHECK = r"""
import os, torch, fastscore
from fastscore import ops, reference, backends
from fastscore._common import seed_bits
assert backends._C.cpu_kernel() == os.environ["FASTSCORE_CPU_KERNEL"], backends._C.cpu_kernel()
loops = {"scalar": "baseline"}.get(os.environ["FASTSCORE_CPU_KERNEL"], os.environ["FASTSCORE_CPU_KERNEL"])
assert backends._C.cpu_loops() == loops, backends._C.cpu_loops()  # with_simd follows the same choice
def same(a, b, what):
    assert a.dtype == b.dtype and torch.equal(a.view(torch.int32) if a.dtype == torch.float32 else a,
                                              b.view(torch.int32) if b.dtype == torch.float32 else b), what
for seed in (0, 1, 2**63 + 7, 0xDEADBEEFCAFEF00D, 2**64 - 1):
    for offset, shape in ((0, (3, 1001)), (1, (5, 333)), ((2**32 - 40) // 7, (9, 7)), (2**33 + 3, (2, 4097))):
        same(ops.noise(shape, seed, offset), reference.noise(shape, seed, offset), (seed, offset))
        same(ops.probes(shape, seed, offset), reference.rademacher(shape, seed, offset), ("signs", seed, offset))
    c = 2**32 - 9
    words = torch.stack(reference.philox4x32(seed_bits(seed), torch.arange(c, c + 50)), 1)
    same(ops.philox_words(seed, c, 50), (words - ((words >> 31) << 32)).to(torch.int32), ("words", seed))
g = torch.Generator().manual_seed(0)
x, s = torch.randn(64, 3, 7, 5, generator=g), torch.randn(64, 3, 7, 5, generator=g)
out = []
for b in ("reference", "cpp"):
    with fastscore.use_backend(b):
        y = x.clone(); ops.step_(y, s, 0.9, 0.1, 0.3, seed=2**63 + 1, offset=2**32)
        c = x.clone(); ops.langevin_corrector_(c, s, 0.16, seed=5, offset=3)
        d = ops.dsm_loss(s, 0.4, seed=9)
        p = ops.perturb(x, 0.4, seed=3, offset=1, mean_scale=0.7)  # x only: the update kernel without y
        out.append((y, c, d, p))
for a, b, what in zip(out[0], out[1], ("step_", "corrector", "dsm_loss", "perturb")):
    same(b, a, what)
print("ok")
"""


def cpu_can_run(kernel: str) -> bool:
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    needs = {"avx512": ("avx512f", "avx512vl", "avx512dq", "avx512bw"), "avx2": ("avx2", "fma"), "scalar": ()}
    return all(f in flags for f in needs[kernel])


def run_forced(kernel: str, code: str, *args: str) -> str:
    env = {**os.environ, "FASTSCORE_CPU_KERNEL": kernel}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout.strip()


@needs_ext
@pytest.mark.parametrize("kernel", ["avx512", "avx2", "scalar"])
def test_each_kernel_path_reproduces_the_reference(kernel):
    if not cpu_can_run(kernel):
        pytest.skip(f"this CPU cannot run the {kernel} path: it is compiled and inspected only")
    assert run_forced(kernel, CHECK).endswith("ok")


ROW_SUMS = r"""
import hashlib, torch
from fastscore import ops
g, h = torch.Generator().manual_seed(1), hashlib.sha256()
def add(t):
    h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
for shape in ((3, 5000), (2, 3, 40, 41), (1, 70001), (40, 3, 7, 9), (64, 40), (30, 192), (50, 17), (90, 7),
              (70, 16), (300, 2)):
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        x, s = torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)
        for mode in ("batch", "per_sample"):
            c = x.clone()
            add(ops.langevin_corrector_(c, s, 0.16, seed=3, offset=5, step_size_mode=mode))
        add(ops.dsm_loss(s, 0.4, seed=9))
        add(ops.dsm_loss(s, torch.linspace(0.2, 2.0, shape[0], dtype=dtype), seed=2**63 + 9))
        jv = torch.randn((shape[0], 2) + shape[1:], generator=g).to(dtype)
        v = torch.randn(jv.shape, generator=g).sign().to(dtype)
        for vr in (False, True):
            add(ops.sliced_score_terms(s, jv, v, vr))
print(h.hexdigest())
"""


@needs_ext
def test_kernel_paths_agree_bitwise_on_row_sums():
    # Rows of more than 16 elements go through row_reduce.cpp's lane kernels (the float sums
    # of products with fma and masked partial groups on AVX2 and AVX-512, the generic loops
    # elsewhere), rows of up to 256 many rows per call (up to 16: a loop per width,
    # vectorised across rows): every path this CPU runs gives the corrector's, DSM's and
    # sliced score matching's bits of the scalar path.
    digests = {k: run_forced(k, ROW_SUMS) for k in ("scalar", "avx2", "avx512") if cpu_can_run(k)}
    if len(digests) < 2:
        pytest.skip("this CPU runs the scalar path only: nothing to compare")
    assert len(set(digests.values())) == 1, digests


@needs_ext
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump not found")
def test_no_fused_multiply_add_in_the_extension():
    # Every fastscore function: the noise kernels and the ops' element loops, whose AVX-512
    # and AVX2 builds (cpu_features.h, with_simd) could contract a * b + c. Two users are
    # allowed: the exact square root, whose rounding decision needs an exact FMA residual, and
    # the float sums of products (row_reduce.cpp: the product of two widened floats is exact,
    # so the fma rounds where the add would).
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", backends._C.__file__], capture_output=True,
                         text=True, check=True).stdout
    noise_fn = re.compile(r"stream_detail|stream_normals|stream_words|stream_signs")
    keep, name, hits = False, "", []
    counted = {"noise": {"%zmm": 0, "%ymm": 0}, "simd": {"%zmm": 0, "%ymm": 0}}
    for line in dis.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            name = m.group(1)
            keep = "fastscore" in name and "sqrt" not in name and "exact_products" not in name
            continue
        if not keep:
            continue
        if re.search(r"\t\s*v?fn?m(?:add|sub)", line):
            hits.append(f"{name}: {line.strip()}")
        group = "noise" if noise_fn.search(name) else "simd" if "simd_detail::run_" in name else None
        if group:
            for register in ("%zmm", "%ymm"):
                counted[group][register] += register in line
    assert not hits, hits[:10]
    # The check sees real code: both SIMD paths of the noise and of the ops' loops are in the build.
    assert all(c["%zmm"] > 500 and c["%ymm"] > 500 for c in counted.values()), counted


# dsm_loss under flush-to-zero without denormals-are-zero (MXCSR), a mode some libraries
# set: there 1.0f * s flushes a denormal score that s + z/sigma keeps, so the fused residual
# (stream_update with a = 1, csrc/dsm.cpp) must not run and the two-step staging must. Sigmas
# of 2^124..2^126 put z/sigma next to the denormals (|z| < 1 flushes to 0 on both sides), the weight
# 2^240 lifts the float64 row sums into float32.
FTZ_ONLY = r"""
import ctypes, sys, torch
import fastscore
from fastscore import ops
torch.set_num_threads(1)  # the mode is per thread: the ops run in this one
g = torch.Generator().manual_seed(4)
s = (torch.randint(-2**23, 2**23, (12, 3, 37), generator=g) * 2.0**-149).float()  # denormals, before the mode
mode = ctypes.CDLL(sys.argv[1])
assert mode.set_ftz_only() == 0x8000  # FTZ set, DAZ clear
assert (s * 1.0 == 0).sum() > (s == 0).sum(), "the mode does not flush 1 * denormal"
sigma, w = 2.0**126, 2.0**240
rows = 2.0 ** (126 - torch.arange(12) % 3)  # per-sample sigmas: 1/sigma stays a normal float
out = {}
for b in ("reference", "cpp"):
    with fastscore.use_backend(b):
        out[b] = [ops.dsm_loss(s, sigma, seed=7, weight=w), ops.dsm_loss(s, rows, seed=2**63 + 7, offset=3, weight=w)]
for a, c in zip(out["reference"], out["cpp"]):
    assert torch.isfinite(a).all() and (a > 0).all() and torch.equal(a.view(torch.int32), c.view(torch.int32)), (a, c)
print("ok")
"""


@needs_ext
@pytest.mark.parametrize("kernel", ["avx512", "avx2", "scalar"])
def test_dsm_loss_under_flush_to_zero_without_daz(kernel, tmp_path):
    if not cpu_can_run(kernel):
        pytest.skip(f"this CPU cannot run the {kernel} path")
    if platform.machine() not in ("x86_64", "AMD64") or shutil.which("gcc") is None:
        pytest.skip("needs x86-64 (MXCSR) and gcc")
    lib = tmp_path / "ftz_only.so"
    src = tmp_path / "ftz_only.c"
    src.write_text("#include <xmmintrin.h>\n"
                   "unsigned set_ftz_only(void) { _mm_setcsr((_mm_getcsr() & ~0x8040u) | 0x8000u);"
                   " return _mm_getcsr() & 0x8040u; }\n")
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    assert run_forced(kernel, FTZ_ONLY, str(lib)).endswith("ok")
