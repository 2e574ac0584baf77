"""The corrector's float64 square roots (csrc/exact_sqrt.cpp): the AVX-512 path (an estimate
from vrsqrt14pd and an exact rounding decision) and the portable path give std::sqrt's bits.

tests/cpu/test_sqrt.cpp, built here from csrc/ without torch, compares each path this CPU can
run with std::sqrt on >= 10^8 values: random bit patterns of every exponent, values next to
rounding midpoints (where a wrong decision shows), squares and powers of two with their
neighbours, the edges of the estimate's range, special values, every tail length.
"""

import re

from support import run_cpp_test


def test_every_sqrt_path_gives_std_sqrt_bits(tmp_path):
    stdout = run_cpp_test("test_sqrt", ("exact_sqrt.cpp",), tmp_path)
    paths = re.search(r"paths tested: (.*)", stdout).group(1).split()
    assert "portable" in paths, paths
    for path in paths:
        values, bad = map(int, re.search(rf"\[{path}\] values (\d+), mismatches (\d+)", stdout).groups())
        assert values >= 10**8 and bad == 0, (path, values, bad)
