import os

# Triton kernels run on CPU tensors only under the interpreter, and the variable must be
# set before the first `import triton` anywhere in the pytest process.
os.environ.setdefault("TRITON_INTERPRET", "1")
