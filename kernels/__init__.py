"""fastscore's Triton kernels, one file per op family (noise, step, corrector, dsm, sliced),
each laid out as: the math, the @triton.jit kernels, the plain launchers (the signatures
of fastscore/ops.py SCHEMAS); _common.py holds what they share. Installed as
``fastscore.kernels``; imported only when the triton backend runs.

The kernels run on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (tests).
What every kernel here obeys, and why:
* Bitwise agreement with the eager reference needs every float op IEEE-rounded and in the
  reference's order, so every launch passes ``enable_fp_fusion=False`` (default fusion
  contracts a*b + c into an fma), divisions and square roots are ``tl.div_rn`` /
  ``tl.sqrt_rn``, and the generated sm_90 PTX is inspected by the tests (tests/support.py).
* Seeds and offsets are loaded inside the kernels from device tensors when given so: no
  host read in a launch, so launches are safe under CUDA-graph capture.
* Scalar int arguments go through ``_common.as_int64``: the interpreter stores Python ints
  in [2**31, 2**32) as uint32 data typed i64.
* The interpreter has no bf16 arithmetic and truncates fp32 -> bf16 stores (compiled casts
  round to nearest): bf16 is tested on the GPU only.
"""
