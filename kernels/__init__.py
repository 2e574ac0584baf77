"""fastscore's Triton kernels: the noise stream (noise.py) and the fused update (step.py).

The kernels run on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (tests).
``ptx.py`` compiles them to sm_90 PTX without a GPU so the generated code can be inspected.
"""
