"""``python -m fastscore bench``: runs the benchmark suite (bench/, pytest-benchmark) and
prints its table — op x backend x size: time, GB/s, % of the copy bandwidth measured in
the same run, speed-up over eager PyTorch and over torch.compile (bench/conftest.py makes
the table, the JSON's extra_info and the PNGs) — and, with ``--compare OLD.json``, flags
every row slower than the saved run by more than ``--threshold``.

The suite lives in the source checkout (bench/ beside the package); an installed wheel
has no benchmarks, and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def bench_dir() -> Path:
    """bench/ of the checkout this package was imported from."""
    here = Path(__file__).resolve().parent.parent / "bench"
    if not (here / "conftest.py").is_file():
        raise FileNotFoundError(f"no benchmark suite at {here}: `python -m fastscore bench` runs from a source "
                                "checkout of fastscore (git clone, then pip install -e .)")
    return here


def row_key(entry: dict) -> str:
    """A benchmark row's identity across runs: its test id (suite, op, size, provider)."""
    return entry.get("fullname") or entry["name"]


def compare(old: dict, new: dict, threshold: float) -> tuple[list[str], int]:
    """Rows present in both runs, new median vs old; (lines, number of regressions): a
    regression is a row more than ``threshold`` (0.10 = 10 %) slower."""
    before = {row_key(e): e for e in old.get("benchmarks", [])}
    lines, regressions = [], 0
    head = f"{'benchmark':<70} {'old µs':>10} {'new µs':>10} {'new/old':>8}"
    lines += [head, "-" * len(head)]
    for e in new.get("benchmarks", []):
        o = before.get(row_key(e))
        if o is None:
            continue
        m_old, m_new = o["stats"]["median"], e["stats"]["median"]
        ratio = m_new / m_old if m_old > 0 else float("inf")
        flag = ratio > 1 + threshold
        regressions += flag
        lines.append(f"{row_key(e)[-70:]:<70} {m_old * 1e6:>10.1f} {m_new * 1e6:>10.1f} {ratio:>8.2f}"
                     f"{'  REGRESSION' if flag else ''}")
    cpus = (old.get("machine_info", {}).get("cpu", {}).get("brand_raw"),
            new.get("machine_info", {}).get("cpu", {}).get("brand_raw"))
    if cpus[0] != cpus[1]:
        lines.append(f"note: the runs are from different CPUs ({cpus[0]} vs {cpus[1]}): ratios mean little")
    lines.append(f"{regressions} regression(s) over {threshold:.0%} among {len(lines) - 2} common rows")
    return lines, regressions


def run(out: str = "bench/results", smoke: bool = False, select: str | None = None, compare_to: str | None = None,
        threshold: float = 0.10, extra: list[str] | None = None) -> int:
    suite = bench_dir()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = out_dir / "bench.json"
    cmd = [sys.executable, "-m", "pytest", str(suite), "-q", "-p", "no:cacheprovider",
           "--benchmark-disable" if smoke else "--benchmark-only", f"--benchmark-json={result}"]
    if select:
        cmd += ["-k", select]
    cmd += extra or []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(suite.parent), os.environ.get("PYTHONPATH", "")]))
    print("running: " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        return rc
    print(f"JSON: {result}; PNGs: {suite / 'results'}")
    if compare_to:
        with open(compare_to) as f:
            old = json.load(f)
        with open(result) as f:
            new = json.load(f)
        lines, regressions = compare(old, new, threshold)
        print("\n".join(lines))
        return 1 if regressions else 0
    return 0
