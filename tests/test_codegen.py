"""The GPU code, inspected without a GPU (SPEC "Noise": same bits as the CPU):
* every Triton kernel compiled to sm_90 PTX holds no approximate, flush-to-zero or fused
  float instruction, uses the IEEE-rounded forms the math needs, and — when the seed and
  offset come as tensors — loads them from global memory (none when they come as ints);
* every csrc/cuda/*.cu compiles with nvcc to sm_90 PTX with the same properties;
* the launch paths (kernels/*.py, fastscore/ops.py) never read device data on the host.
"""

import os
import pathlib
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from support import FORBIDDEN, NVCC, ROOT, forbidden_in, nvcc_ptx, triton_ptx

NONE = None
LOAD64 = re.compile(r"\bld\.global(?:\.[a-z]+)*\.(?:b64|u64|s64)\b")


def stream_sig(from_ptr: bool) -> tuple[dict, dict]:
    """Signature and constexprs of (seed_ptr, seed, offset_ptr, offset)."""
    if from_ptr:
        return {"seed_ptr": "*i64", "seed": "i64", "offset_ptr": "*i64", "offset": "i64"}, \
            {"SEED_PTR": True, "OFFSET_PTR": True}
    return {"seed": "i64", "offset": "i64"}, {"seed_ptr": NONE, "offset_ptr": NONE, "SEED_PTR": False,
                                              "OFFSET_PTR": False}


def update_spec(dtype: str, from_ptr: bool, fusion: bool = False):
    """update_kernel with one y, two outputs, noise from the stream, and slots of every kind:
    out = (value a, per-row b, value c), out2 = (0-d a', per-row b', no noise)."""
    cd = "fp64" if dtype == "fp64" else "fp32"
    vcd = "fp32"  # float arguments are fp32 (fp64 data takes its floats as tensors)
    modes = (0, 2, 0, 1, 2, 0) if cd == "fp32" else (1, 2, 1, 1, 2, 1)
    vals = [vcd if m == 0 else "constexpr" for m in modes]
    ptrs = ["constexpr" if m == 0 else f"*{cd}" for m in modes]  # coefficient tensors (fp32: no 64-bit loads)
    strides = ["i64" if m == 2 else "constexpr" for m in modes]
    sig, consts = stream_sig(from_ptr)
    sig.update({"out_ptr": f"*{dtype}", "out2_ptr": f"*{dtype}", "x_ptr": f"*{dtype}", "ys": [f"*{dtype}"],
                "vals": vals, "ptrs": ptrs, "strides": strides, "n": "i64", "R": "i64"})
    consts.update({"noise_ptr": NONE, "K": 1, "NOUT": 2, "MODES": list(modes), "DRAW0": True, "DRAW1": False,
                   "NOISE": 1, "CD": 64 if cd == "fp64" else 32, "BLOCK": 256})
    for i, m in enumerate(modes):  # vals, ptrs and strides are arguments 5, 6 and 7
        if m == 0:
            consts[(6, i)] = NONE
        else:
            consts[(5, i)] = NONE
        if m != 2:
            consts[(7, i)] = 0
    return ("fastscore.kernels.step", "update_kernel", sig, consts, fusion)


def noise_spec(dtype: str, dist: int, from_ptr: bool):
    sig, consts = stream_sig(from_ptr)
    sig.update({"out_ptr": f"*{dtype}", "R": "i64", "n": "i64"})
    consts.update({"DIST": dist, "BLOCK": 256})
    return ("fastscore.kernels.noise", "noise_kernel", sig, consts, False)


def corrector_spec(dtype: str, from_ptr: bool):
    sig, consts = stream_sig(from_ptr)
    sig.update({"part_ptr": "*fp64", "score_ptr": f"*{dtype}", "R": "i64", "n_blocks": "i64"})
    consts.update({"noise_ptr": NONE, "NOISE_TENSOR": False, "BLOCK": 256})
    return ("fastscore.kernels.corrector", "row_sq_sums_kernel", sig, consts, False)


def dsm_spec(kernel: str, dtype: str, from_ptr: bool):
    cd = "fp64" if dtype == "fp64" else "fp32"
    sig, consts = stream_sig(from_ptr)
    sig.update({"score_ptr": f"*{dtype}", "vals": ["constexpr"], "ptrs": ["*fp64"], "strides": ["i64"], "R": "i64"})
    consts.update({"noise_ptr": NONE, "MODES": [2], "NOISE_TENSOR": False, "CD": 64 if cd == "fp64" else 32,
                   "BLOCK": 256})
    index = {"dsm_loss_kernel": 3, "dsm_loss_backward_kernel": 4}[kernel]  # position of ``vals``
    consts[(index, 0)] = NONE
    if kernel == "dsm_loss_kernel":
        sig.update({"part_ptr": "*fp64", "n_blocks": "i64"})
    else:
        sig.update({"out_ptr": f"*{dtype}", "scale_ptr": f"*{cd}", "n": "i64"})
    return ("fastscore.kernels.dsm", kernel, sig, consts, False)


KERNELS = {
    "noise_fp32_ptr": noise_spec("fp32", 0, True),
    "noise_fp32_int": noise_spec("fp32", 0, False),
    "noise_fp16_ptr": noise_spec("fp16", 0, True),
    "signs_fp32_ptr": noise_spec("fp32", 1, True),
    "philox": ("fastscore.kernels.noise", "philox_kernel",
               {"out_ptr": "*i32", "seed_ptr": "*i64", "seed": "i64", "first": "i64", "n": "i64"},
               {"SEED_PTR": True, "BLOCK": 256}, False),
    "labels": ("fastscore.kernels.noise", "labels_kernel",
               {"out_ptr": "*i64", "seed_ptr": "*i64", "seed": "i64", "first": "i64", "n": "i64", "n_levels": "i64"},
               {"SEED_PTR": True, "BLOCK": 256}, False),
    "derive_seeds": ("fastscore.kernels.noise", "derive_seeds_kernel",
                     {"out_ptr": "*i64", "seed_ptr": "*i64", "n": "i64"}, {"BLOCK": 256}, False),
    "update_fp32_ptr": update_spec("fp32", True),
    "update_fp32_int": update_spec("fp32", False),
    "update_fp16_ptr": update_spec("fp16", True),
    "update_fp64_ptr": update_spec("fp64", True),
    "control_update_fused": update_spec("fp32", True, fusion=True),
    "corrector_fp32_ptr": corrector_spec("fp32", True),
    "corrector_fp16_int": corrector_spec("fp16", False),
    "dsm_fp32_ptr": dsm_spec("dsm_loss_kernel", "fp32", True),
    "dsm_backward_fp32_ptr": dsm_spec("dsm_loss_backward_kernel", "fp32", True),
    "dsm_fp64_ptr": dsm_spec("dsm_loss_kernel", "fp64", True),
    "sliced_fp32": ("fastscore.kernels.sliced", "sliced_partials_kernel",
                    {"part_ptr": "*fp64", "sq_ptr": "*fp64", "score_ptr": "*fp32", "jv_ptr": "*fp32", "v_ptr": "*fp32",
                     "P": "i64", "D": "i64", "n_blocks": "i64"},
                    {"VARIANCE_REDUCTION": True, "FP64": False, "BLOCK": 1024}, False),
    "sliced_backward_fp32": ("fastscore.kernels.sliced", "sliced_backward_kernel",
                             {"gs_ptr": "*fp32", "gj_ptr": "*fp32", "score_ptr": "*fp32", "v_ptr": "*fp32",
                              "per_p_ptr": "*fp32", "coef_ptr": "*fp32", "P": "i64", "D": "i64", "n": "i64"},
                             {"VARIANCE_REDUCTION": False, "FP64": False, "BLOCK": 1024}, False),
}
DRAWS = [k for k in KERNELS if k.split("_")[0] in ("noise", "update", "corrector", "dsm")]


@pytest.fixture(scope="module")
def ptx():
    pytest.importorskip("triton")
    return triton_ptx(KERNELS)


@pytest.mark.parametrize("name", [k for k in KERNELS if not k.startswith("control")])
def test_triton_ptx_has_only_ieee_rounded_float_ops(ptx, name):
    text = ptx[name]
    assert ".target sm_90" in text
    assert not forbidden_in(text), forbidden_in(text)
    if name in DRAWS:  # the stream is generated in place: Philox and the exact Box-Muller
        for op in ("mul.hi.u32", "div.rn.f32", "sqrt.rn.f32", "mul.rn.f32", "add.rn.f32"):
            assert op in text, f"{name}: expected {op}"


def test_triton_labels_round_as_the_formula(ptx):
    """The label kernel's steps are the reference's: int32 -> fp32 to nearest, an fp32 and a
    float64 product rounded to nearest, float64 -> int64 toward zero."""
    for op in ("mul.hi.u32", "cvt.rn.f32.s32", "mul.rn.f32", "cvt.f64.f32", "mul.rn.f64", "cvt.rzi.s64.f64"):
        assert op in ptx["labels"], op


@pytest.mark.parametrize("family", ["noise_fp32", "update_fp32", "corrector", "dsm_fp32"])
def test_triton_kernels_load_tensor_seeds_from_global_memory(ptx, family):
    """With seed/offset tensors the kernel loads 64-bit values from global memory; with ints
    it has no 64-bit global load at all (the values are kernel parameters)."""
    with_ptr = [k for k in KERNELS if k.startswith(family) and k.endswith("_ptr")]
    assert with_ptr
    for name in with_ptr:
        assert LOAD64.search(ptx[name]), f"{name}: no 64-bit global load of the seed/offset"
    for name in (k for k in KERNELS if k.startswith(family) and k.endswith("_int")):
        assert not LOAD64.search(ptx[name]), f"{name}: unexpected 64-bit global load"


def test_triton_control_fusion_is_visible(ptx):
    # Without enable_fp_fusion=False the same kernel gets fma: the check above can see one.
    assert FORBIDDEN["fused multiply-add"].search(ptx["control_update_fused"])


# --------------------------------------------------------------------------- CUDA sources

CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
# With setup.py's flags and with nvcc's defaults (fmad on).
NVCC_FLAGS = {"setup-flags": ("--fmad=false", "-O3"), "nvcc-defaults": ("-O3",)}
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found: CUDA sources cannot be compiled here")


@pytest.fixture(scope="module")
def cuda_ptx(tmp_path_factory):
    """Futures of the PTX text of every (source name, flags id), compiled side by side: one
    nvcc run keeps one core busy for 10-20 s, so one after another they took ~150 s here.
    A failed compile raises its nvcc error in the test that asks for that PTX."""
    out = tmp_path_factory.mktemp("nvcc")
    pool = ThreadPoolExecutor(max_workers=max(1, len(os.sched_getaffinity(0))))
    futures = {(src.name, fid): pool.submit(nvcc_ptx, src, out / f"{src.stem}-{fid}.ptx", *flags)
               for fid, flags in NVCC_FLAGS.items() for src in CUDA_SOURCES}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def test_there_are_cuda_sources():
    assert {p.name for p in CUDA_SOURCES} >= {"noise.cu", "step.cu", "corrector.cu", "dsm.cu", "sliced.cu"}


@needs_nvcc
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
@pytest.mark.parametrize("flags", list(NVCC_FLAGS))
def test_cuda_source_compiles_to_exact_ptx(source, flags, cuda_ptx):
    # Every float op is an explicit round-to-nearest intrinsic, so even a build that allows
    # contraction keeps the bits.
    text = cuda_ptx[source.name, flags].result()
    assert ".entry" in text, "no kernel was generated"
    assert not forbidden_in(text), f"{source.name}: {forbidden_in(text)}"
    needed = ["mul.rn.f32", "add.rn.f32"]
    src = source.read_text()
    if "normals4" in src or "for_each_owned_element" in src or "for_each_chunk_element" in src:
        needed += ["mul.hi.u32", "div.rn.f32", "sqrt.rn.f32"]  # Philox, the exact Box-Muller
    if "labels_kernel" in src:  # the level index: rounded products, truncation toward zero
        needed += ["cvt.rn.f32.s32", "mul.rn.f64", "cvt.rzi.s64.f64"]
    for instruction in needed:
        assert instruction in text, f"{source.name}: expected {instruction} in PTX"
    if "Stream s" in src or "KernelInt" in src:  # seeds/offsets may be device tensors: read in the kernel
        assert LOAD64.search(text), f"{source.name}: no 64-bit global load (seed/offset pointers)"


@needs_nvcc
def test_the_nvcc_check_can_see_a_contracted_fma(tmp_path):
    src = tmp_path / "axpy.cu"
    src.write_text("__global__ void axpy(float* y, const float* x, float a) {\n"
                   "  int i = threadIdx.x; y[i] = a * x[i] + y[i]; }\n")
    assert FORBIDDEN["fused multiply-add"].search(nvcc_ptx(src, tmp_path / "axpy.ptx", "-O3"))


# --------------------------------------------------------------------------- launch paths

HOST_READ = re.compile(r"\.(?:item|tolist|cpu|numpy)\(|\.to\([\"']cpu")


@pytest.mark.parametrize("path", sorted((ROOT / "kernels").glob("*.py")) + [ROOT / "fastscore" / "ops.py"],
                         ids=lambda p: p.name)
def test_launch_paths_hold_no_host_read(path: pathlib.Path):
    """kernels/ and the op layer never call .item(), .tolist(), .cpu() or .numpy(); the one
    host read of a launch (kernels/_common.py: an int of a CPU seed tensor, host memory) is
    spelled int() in a function that only CPU tensors reach (tests/test_meta.py)."""
    hits = [f"{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1)
            if HOST_READ.search(line) and not line.lstrip().startswith("#")]
    assert not hits, hits
