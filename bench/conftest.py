"""Shared machinery of the fastscore benchmarks (pytest-benchmark).

* two intra-op threads for every row (the machine has 2 cores; NOTES.md's peer table too);
* ``copy_bandwidth``: the machine's copy bandwidth measured in the same run
  (``dst.copy_(src)`` of a 256 MiB fp32 tensor, best of N, bytes = read + write);
* at session end every benchmark's ``extra_info`` gets GB/s, % of copy bandwidth,
  normals/s and the speed-ups over the eager and torch.compile rows of the same op and
  size (before pytest-benchmark writes ``--benchmark-json``, so the JSON holds them);
* a PNG of median µs per op / size / provider in bench/results/, and a compact table
  in the terminal summary.

Tests describe themselves through ``benchmark.extra_info``:
    suite     "ops" | "generator" | "samplers" | "sampler_step" | "losses"
    op, size, provider            the row; speed-ups compare rows with equal (suite, op, size)
                                  against provider "eager" and "compile"
    bytes     nominal useful bytes moved per call (see README.md)
    normals   elements that draw a normal per call
    threads   intra-op threads the row ran with
    steps     sampler steps per call (sampler suites): the summary adds ``us_per_step`` and
              the speed-ups compare time PER STEP, so rows run with different step counts
              (the slow reference backend runs fewer) stay comparable
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
PLOT_PATH = RESULTS_DIR / "ops.png"  # ops + generator; samplers.png and losses.png beside it
THREADS = 2

torch.set_num_threads(THREADS)

# `python -m pytest bench` from the repo root finds fastscore via PYTHONPATH=. or an
# editable install; fall back to the checkout this file lives in.
if importlib.util.find_spec("fastscore") is None:
    sys.path.insert(0, str(BENCH_DIR.parent))

OP_ORDER = ("langevin_step_", "step_", "update", "perturb", "noise", "generator", "langevin_corrector_")
SIZE_ORDER = ("4x2", "2x4096", "64x3x32x32", "16x3x256x256")
PROVIDER_ORDER = ("cpp", "reference", "eager", "diffusers", "compile")
SAMPLER_SUITES = ("samplers", "sampler_step")  # whole runs on an analytic score; per step, zero-cost score
SAMPLER_ORDER = ("annealed_langevin", "pc")
LOSS_ORDER = ("anneal_dsm", "train_step", "sliced_sm", "sliced_terms", "log_likelihood")
FUSED_PROVIDER_ORDER = ("fused", "reference", "eager", "compile")

COPY_BYTES = 256 << 20  # source tensor size; one copy moves 2x this (read + write)

_copy_key = pytest.StashKey[dict]()
_plot_key = pytest.StashKey[str]()


def pytest_configure(config):
    # torch.compile's internals trip this on every compile; it says nothing about fastscore.
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def benchmarks_disabled(config) -> bool:
    return bool(config.getoption("benchmark_disable", False))


# --------------------------------------------------------------------------- copy baseline


def measure_copy_bandwidth(repeats: int) -> dict:
    src = torch.ones(COPY_BYTES // 4, dtype=torch.float32)
    dst = torch.zeros_like(src)
    dst.copy_(src)  # touch the pages
    times = []
    before = cpu_snapshot()
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    moved = 2 * COPY_BYTES
    best = min(times)
    return {
        "copy_tensor_bytes": COPY_BYTES,
        "copy_bytes_moved": moved,
        "copy_best_s": best,
        "copy_GBps": moved / best / 1e9,
        "copy_repeats": repeats,
        "threads": torch.get_num_threads(),
        "other_load_cores": other_load(before, cpu_snapshot()),
    }


@pytest.fixture(scope="session", autouse=True)
def copy_bandwidth(request) -> dict:
    """Copy bandwidth of this machine, measured once per session (best of 20; 2 when
    benchmarks are disabled, where nothing reads it but the code path still runs)."""
    config = request.config
    info = config.stash.get(_copy_key, None)
    if info is None:
        info = measure_copy_bandwidth(2 if benchmarks_disabled(config) else 20)
        config.stash[_copy_key] = info
    return info


# --------------------------------------------------------------------------- machine load
# Other processes on a 2-core machine wreck the 2-thread rows (a parallel_for waits a
# scheduler tick for its second thread: ~4 ms quanta). Each row records how many cores
# other processes kept busy while it was timed, and the summary flags busy rows.

BUSY_FLAG = 0.25  # cores used by others, on average, above which a row is flagged
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_snapshot():
    """(machine busy CPU seconds, this process's CPU seconds, wall seconds), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / _CLK_TCK, time.process_time(), time.perf_counter()


def other_load(before, after):
    """Cores kept busy by other processes between two snapshots (jiffy resolution)."""
    if before is None or after is None or after[2] - before[2] <= 0:
        return None
    other = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, other / (after[2] - before[2]))


# --------------------------------------------------------------------------- timing

BUDGET_S = 1.0  # about this many timed seconds per row
MIN_ROUNDS, MAX_ROUNDS = 5, 1000
MIN_ROUND_S = 2e-4  # batch fast calls so one round lasts >= 200 µs (timer noise << 1%)


def plan_long_rounds(per_call_s: float, budget_s: float, max_rounds: int = 5) -> int:
    """Rounds of one call each for rows that last 0.1 s - several s (whole sampler runs):
    as many as fit in ``budget_s``, at least 1, at most ``max_rounds``."""
    return max(1, min(max_rounds, int(budget_s / max(per_call_s, 1e-9))))


def plan_rounds(fn, budget_s: float = BUDGET_S) -> tuple[int, int]:
    """Warm ``fn`` up (two calls), estimate its time per call, and pick (rounds,
    iterations) so the timed part lasts about ``budget_s`` but never fewer than
    MIN_ROUNDS rounds (the 100 ms rows: 5 rounds)."""
    fn()
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= 0.02 or n >= 200:
            break
    per_call = elapsed / n
    iterations = max(1, round(MIN_ROUND_S / per_call))
    rounds = int(budget_s / (per_call * iterations))
    return max(MIN_ROUNDS, min(MAX_ROUNDS, rounds)), iterations


@pytest.fixture
def run_timed(benchmark, request):
    """``run_timed(fn)``: time a zero-arg callable with benchmark.pedantic after a warm-up,
    or call it once under --benchmark-disable (the CI smoke run).

    ``run_timed(fn, rounds=n)`` skips the planner (and its three warm-up calls): for
    long rows the caller warms up on a shorter run of the same code and picks n itself
    (``plan_long_rounds``); each round is one call."""

    def run(fn, budget_s: float = BUDGET_S, rounds: int | None = None):
        if benchmarks_disabled(request.config):
            return benchmark(fn)  # disabled: a single plain call
        if rounds is None:
            rounds, iterations = plan_rounds(fn, budget_s)
        else:
            iterations = 1
        before = cpu_snapshot()
        result = benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=0)
        benchmark.extra_info.update(rounds=rounds, iterations=iterations,
                                    other_load_cores=other_load(before, cpu_snapshot()))
        return result

    return run


@pytest.fixture
def run_long(run_timed, request):
    """``run_long(fn, warm, scale)`` for rows of 0.1 s - several s (whole sampler runs):
    call ``warm`` (a short run of the same code) twice, estimate fn's time as ``scale``
    times the second call, then time 1-5 rounds of one call each within ``budget_s``.
    Under --benchmark-disable: one plain call of fn, no warm-up."""

    def run(fn, warm, scale: float, budget_s: float = 3.0, max_rounds: int = 5):
        if benchmarks_disabled(request.config):
            return run_timed(fn)
        warm()
        t0 = time.perf_counter()
        warm()
        estimate = (time.perf_counter() - t0) * scale
        return run_timed(fn, rounds=plan_long_rounds(estimate, budget_s, max_rounds))

    return run


# --------------------------------------------------------------------------- annotation


def _session_benchmarks(config) -> list:
    bs = getattr(config, "_benchmarksession", None)
    if bs is None:
        return []
    return [b for b in bs.benchmarks if not getattr(b, "has_error", False) and b.stats and b.stats.rounds]


def _key(info: dict) -> tuple:
    return info.get("suite"), info.get("op"), info.get("size")


def _per_step(info: dict, median: float) -> float:
    """Median seconds per unit of work: per sampler step when the row says how many
    steps it ran (``steps``), else per call."""
    return median / (info.get("steps") or 1)


def annotate(config) -> list:
    """Add derived metrics to every finished benchmark's extra_info (idempotent)."""
    benches = _session_benchmarks(config)
    copy = config.stash.get(_copy_key, None)
    copy_gbps = copy["copy_GBps"] if copy else None
    medians = {}
    for b in benches:
        info = b.extra_info
        medians[_key(info) + (info.get("provider"),)] = _per_step(info, b.stats.median)
    for b in benches:
        info, med = b.extra_info, b.stats.median
        info["median_us"] = med * 1e6
        if info.get("steps"):
            info["us_per_step"] = med * 1e6 / info["steps"]
            if info.get("ops_us_per_step") is not None:  # fused ops alone, timed by the test
                info["loop_us_per_step"] = info["us_per_step"] - info["ops_us_per_step"]
        if info.get("bytes") is not None and med > 0:
            gbps = info["bytes"] / med / 1e9
            info["GBps"] = gbps
            info["copy_GBps"] = copy_gbps
            info["pct_copy"] = 100.0 * gbps / copy_gbps if copy_gbps else None
        if info.get("normals") and med > 0:
            info["normals_per_s"] = info["normals"] / med
            info["normals_per_s_per_thread"] = info["normals"] / med / max(1, info.get("threads", THREADS))
        unit = _per_step(info, med)
        gen = medians.get((info.get("suite"), "generator", info.get("size"), "cpp"))
        if info.get("provider") == "cpp" and info.get("normals") and info.get("op") != "generator" and gen:
            info["x_generator"] = unit / gen  # against the noise stream alone at this size, same run
        for base in ("eager", "compile", "peer"):
            ref = medians.get(_key(info) + (base,))
            info[f"speedup_vs_{base}"] = ref / unit if ref and unit > 0 else None
    return benches


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    # Runs before pytest-benchmark's own sessionfinish, which writes --benchmark-json.
    annotate(session.config)
    result = yield
    benches = _session_benchmarks(session.config)
    if benches:
        try:
            paths = write_plot(benches, session.config.stash.get(_copy_key, None))
            session.config.stash[_plot_key] = ", ".join(str(p) for p in paths)
        except Exception as e:  # a plot must never fail the run
            session.config.stash[_plot_key] = f"(plot failed: {e!r})"
    return result



def pytest_benchmark_update_json(config, benchmarks, output_json):
    annotate(config)
    by_name = {b.fullname: b.extra_info for b in _session_benchmarks(config)}
    for entry in output_json.get("benchmarks", []):
        if entry.get("fullname") in by_name:
            entry["extra_info"] = dict(by_name[entry["fullname"]])
    copy = config.stash.get(_copy_key, None)
    if copy:
        output_json["fastscore"] = {"copy_bandwidth": copy, "threads": THREADS}


# --------------------------------------------------------------------------- plot


def _order(seq, order):
    return sorted(seq, key=lambda v: (order.index(v) if v in order else len(order), str(v)))


def write_plot(benches, copy) -> list[Path]:
    """One PNG per family that ran: ops.png (ops + generator, as before), samplers.png
    (µs per step), losses.png; a run of one file leaves the others' PNGs alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    ops_rows = [b.extra_info for b in benches if b.extra_info.get("suite") == "ops"]
    gen_rows = [b.extra_info for b in benches if b.extra_info.get("suite") == "generator"]
    per_call = "median µs per call (log)"
    panels = [(op, [r for r in ops_rows if r["op"] == op], "median_us", per_call)
              for op in _order({r["op"] for r in ops_rows}, OP_ORDER)]
    if gen_rows:
        panels.append(("noise generator (2**22 normals)", gen_rows, "median_us", per_call))
    sampler_panels, loss_panels = [], []
    for suite, what in (("samplers", "analytic score"), ("sampler_step", "zero-cost score")):
        rows = [b.extra_info for b in benches if b.extra_info.get("suite") == suite]
        for op in _order({r["op"] for r in rows}, SAMPLER_ORDER):
            sampler_panels.append((f"{op}, {what}", [r for r in rows if r["op"] == op], "us_per_step",
                                   "µs per step (log)"))
    dropin_rows = [b.extra_info for b in benches if b.extra_info.get("suite") == "dropins"]
    dropin_panels = [(op, [r for r in dropin_rows if r["op"] == op], "us_per_step", "µs per step (log)")
                     for op in sorted({r["op"] for r in dropin_rows})]
    loss_rows = [b.extra_info for b in benches if b.extra_info.get("suite") == "losses"]
    for op in _order({r["op"] for r in loss_rows}, LOSS_ORDER):
        loss_panels.append((f"{op} (fwd+bwd)" if op != "log_likelihood" else op,
                            [r for r in loss_rows if r["op"] == op], "median_us", per_call))
    written = []
    for path, group in ((PLOT_PATH, panels), (RESULTS_DIR / "samplers.png", sampler_panels),
                        (RESULTS_DIR / "losses.png", loss_panels), (RESULTS_DIR / "dropins.png", dropin_panels)):
        if group:
            _plot_panels(plt, group, copy, path)
            written.append(path)
    return written


def _plot_panels(plt, panels, copy, path) -> None:
    colors = {"cpp": "tab:blue", "fused": "tab:blue", "reference": "tab:gray", "eager": "tab:orange",
              "peer": "tab:orange", "compile": "tab:green"}
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, rows, metric, ylabel) in zip(axes.flat, panels):
        sizes = _order({r["size"] for r in rows}, SIZE_ORDER)
        providers = _order({r["provider"] for r in rows}, ("cpp",) + FUSED_PROVIDER_ORDER)
        width = 0.8 / max(1, len(providers))
        for j, p in enumerate(providers):
            xs, ys, busy = [], [], []
            for i, s in enumerate(sizes):
                hit = [r for r in rows if r["size"] == s and r["provider"] == p]
                if hit:
                    xs.append(i + (j - (len(providers) - 1) / 2) * width)
                    ys.append(hit[0][metric])
                    busy.append((hit[0].get("other_load_cores") or 0) > BUSY_FLAG)
            bars = ax.bar(xs, ys, width, label=p, color=colors.get(p))
            for bar, y, b in zip(bars, ys, busy):
                label = (f"{y:.1f}" if y < 100 else f"{y:.0f}" if y < 1000 else f"{y / 1e3:.1f}k") + ("!" if b else "")
                ax.text(bar.get_x() + bar.get_width() / 2, y, label, ha="center", va="bottom", fontsize=7)
        ax.set_yscale("log")
        ax.set_xticks(range(len(sizes)))
        ax.set_xticklabels(sizes, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.margins(y=0.15)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7)
    bw = f"copy bandwidth {copy['copy_GBps']:.1f} GB/s, " if copy else ""
    fig.suptitle(f"fastscore on CPU, fp32, {THREADS} threads: median µs, lower is better "
                 f"({bw}'!' = other processes busy during the row)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- terminal table


def _fmt(v, spec, missing="-"):
    return missing if v is None else format(v, spec)


def format_table(benches, copy) -> list[str]:
    lines = []
    ops_rows = [b.extra_info for b in benches if b.extra_info.get("suite") == "ops"]
    gen_rows = [b.extra_info for b in benches if b.extra_info.get("suite") == "generator"]
    if copy:
        lines.append(
            f"copy bandwidth: {copy['copy_GBps']:.1f} GB/s (dst.copy_(src), 256 MiB fp32, read+write, "
            f"best of {copy['copy_repeats']}, {copy['threads']} threads, busy {_busy(copy).strip()})"
        )
    if ops_rows:
        ops_rows.sort(key=lambda r: (
            OP_ORDER.index(r["op"]) if r["op"] in OP_ORDER else 99,
            SIZE_ORDER.index(r["size"]) if r["size"] in SIZE_ORDER else 99,
            PROVIDER_ORDER.index(r["provider"]) if r["provider"] in PROVIDER_ORDER else 99,
        ))
        head = (f"{'op':<15} {'size':<13} {'provider':<10} {'median µs':>10} {'GB/s':>7} {'%copy':>6} "
                f"{'Mnormals/s':>10} {'x-vs-eager':>10} {'x-vs-compile':>12} {'t/gen':>7} {'busy':>5}")
        lines += _grouped_table(head, ops_rows, lambda r: (r["op"], r["size"]), lambda r: (
            f"{r['op']:<15} {r['size']:<13} {r['provider']:<10} {r['median_us']:>10.1f} "
            f"{_fmt(r.get('GBps'), '.2f'):>7} {_fmt(r.get('pct_copy'), '.1f'):>6} "
            f"{_fmt(r.get('normals_per_s') and r['normals_per_s'] / 1e6, '.0f'):>10} "
            f"{_fmt(r.get('speedup_vs_eager'), '.2f'):>10} {_fmt(r.get('speedup_vs_compile'), '.2f'):>12} "
            f"{_fmt(r.get('x_generator'), '.2f'):>7} {_busy(r)}"))
    if gen_rows:
        gen_rows.sort(key=lambda r: (r.get("threads", 0), r["provider"]))
        head = (f"{'generator':<34} {'threads':>7} {'median µs':>10} {'Mnormals/s':>10} "
                f"{'Mnormals/s/core':>15} {'GB/s':>6} {'x-vs-randn':>10} {'busy':>5}")
        lines += ["", head, "-" * len(head)]
        for r in gen_rows:
            lines.append(
                f"{r.get('impl', r['provider']):<34} {r.get('threads', 0):>7} {r['median_us']:>10.1f} "
                f"{r['normals_per_s'] / 1e6:>10.0f} {r['normals_per_s_per_thread'] / 1e6:>15.0f} "
                f"{_fmt(r.get('GBps'), '.2f'):>6} {_fmt(r.get('speedup_vs_eager'), '.2f'):>10} {_busy(r)}"
            )
    sampler_rows = [b.extra_info for b in benches if b.extra_info.get("suite") in SAMPLER_SUITES]
    if sampler_rows:
        lines += [""] + format_sampler_table(sampler_rows)
    loss_rows = [b.extra_info for b in benches if b.extra_info.get("suite") == "losses"]
    if loss_rows:
        lines += [""] + format_loss_table(loss_rows)
    dropin_rows = [b.extra_info for b in benches if b.extra_info.get("suite") == "dropins"]
    if dropin_rows:
        lines += [""] + format_dropin_table(dropin_rows)
    rows = ops_rows + gen_rows + sampler_rows + loss_rows + dropin_rows
    flagged = [r for r in rows if (r.get("other_load_cores") or 0) > BUSY_FLAG]
    lines.append("")
    lines.append(f"busy = cores other processes kept busy while the row was timed; '!' above {BUSY_FLAG}.")
    if flagged:
        lines.append(
            f"WARNING: {len(flagged)} of {len(rows)} rows ran beside other work on this {os.cpu_count()}-core "
            "machine; their times are not the kernels' (rerun on a quiet machine)."
        )
    return lines


def _rank(v, order) -> int:
    return order.index(v) if v in order else len(order)


def format_sampler_table(rows) -> list[str]:
    """Whole sampler runs (suite "samplers", analytic score) and the per-step cost with a
    zero-cost score (suite "sampler_step"); speed-ups are per step."""
    rows = sorted(rows, key=lambda r: (_rank(r["suite"], SAMPLER_SUITES), _rank(r["op"], SAMPLER_ORDER),
                                       _rank(r["size"], SIZE_ORDER), _rank(r["provider"], FUSED_PROVIDER_ORDER)))
    head = (f"{'sampler':<18} {'score':<9} {'size':<11} {'provider':<10} {'steps':>6} {'median ms':>10} "
            f"{'µs/step':>9} {'ops µs':>7} {'loop µs':>7} {'x-vs-eager':>10} {'busy':>5}")
    lines = _grouped_table(head, rows, lambda r: (r["suite"], r["op"], r["size"]), lambda r: (
        f"{r['op']:<18} {r.get('score', '-'):<9} {r['size']:<11} {r['provider']:<10} {r['steps']:>6} "
        f"{r['median_us'] / 1e3:>10.2f} {r['us_per_step']:>9.1f} {_fmt(r.get('ops_us_per_step'), '.1f'):>7} "
        f"{_fmt(r.get('loop_us_per_step'), '.1f'):>7} {_fmt(r.get('speedup_vs_eager'), '.2f'):>10} {_busy(r)}"))
    lines.append("steps: annealed_langevin = levels x steps each (1 score + 1 update); pc = sde.N "
                 "(corrector + predictor, 2 scores). x-vs-eager compares µs/step. ops µs: the step's fused ops "
                 "alone, back to back; loop µs = µs/step - ops µs (the sampler's Python per step).")
    return lines


def format_loss_table(rows) -> list[str]:
    """Loss forward+backward rows and the likelihood: time, speed-up, bytes saved for
    backward, profiler peak of extra memory, and the ODE's function evaluations."""
    rows = sorted(rows, key=lambda r: (_rank(r["op"], LOSS_ORDER), _rank(r["size"], SIZE_ORDER), str(r["size"]),
                                       _rank(r["provider"], FUSED_PROVIDER_ORDER)))
    head = (f"{'loss':<15} {'size':<22} {'provider':<9} {'median ms':>10} {'x-vs-eager':>10} "
            f"{'saved MB':>9} {'new BxD':>7} {'peak MB':>8} {'NFE':>5} {'busy':>5}")
    def line(r):
        mb = (lambda k: _fmt(r.get(k) and r[k] / 1e6, ".2f") if r.get(k) is not None else "-")
        return (f"{r['op']:<15} {r['size']:<22} {r['provider']:<9} {r['median_us'] / 1e3:>10.3f} "
                f"{_fmt(r.get('speedup_vs_eager'), '.2f'):>10} {mb('saved_bytes'):>9} "
                f"{_fmt(r.get('saved_new_bxd'), 'd'):>7} {mb('peak_extra_bytes'):>8} {_fmt(r.get('nfe'), 'd'):>5} "
                f"{_busy(r)}")

    lines = _grouped_table(head, rows, lambda r: (r["op"], r["size"]), line)
    lines.append("saved MB: distinct storages autograd saved for backward (saved_tensors_hooks); new BxD: "
                 "saved tensors of >= B*D elements that are not the inputs/parameters (e.g. a noise tensor); "
                 "peak MB: torch.profiler peak of memory allocated during fwd+bwd, above the start.")
    return lines


def format_dropin_table(rows) -> list[str]:
    """fastscore.k_diffusion / fastscore.diffusers against the originals, µs per step."""
    rows = sorted(rows, key=lambda r: (r["peer"], r["op"], _rank(r["size"], SIZE_ORDER), r["provider"]))
    head = (f"{'drop-in':<20} {'peer':<24} {'size':<13} {'provider':<8} {'steps':>5} {'µs/step':>10} "
            f"{'x-vs-peer':>9} {'busy':>5}")
    lines = _grouped_table(head, rows, lambda r: (r["op"], r["size"]), lambda r: (
        f"{r['op']:<20} {r['peer']:<24} {r['size']:<13} {r['provider']:<8} {r['steps']:>5} "
        f"{r['us_per_step']:>10.1f} {_fmt(r.get('speedup_vs_peer'), '.2f'):>9} {_busy(r)}"))
    lines.append("zero-cost model (a preallocated tensor): the sampler's own update, noise and Python per step; "
                 "peer = the original with its default noise (k-diffusion: randn_like / Brownian tree; "
                 "diffusers: no generator, global RNG); fused = fastscore's stream.")
    return lines


def _grouped_table(head: str, rows, group, line) -> list[str]:
    """head, a rule, then line(r) per row, with a blank line wherever group(r) changes."""
    lines = [head, "-" * len(head)]
    prev = None
    for r in rows:
        if prev is not None and group(r) != prev:
            lines.append("")
        prev = group(r)
        lines.append(line(r))
    return lines


def _busy(r) -> str:
    v = r.get("other_load_cores")
    if v is None:
        return f"{'-':>5}"
    return f"{v:>4.1f}" + ("!" if v > BUSY_FLAG else " ")


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if benchmarks_disabled(config):
        terminalreporter.write_sep("-", "fastscore bench: --benchmark-disable, each function ran once (smoke)")
        return
    benches = annotate(config)
    if not benches:
        return
    terminalreporter.write_sep("=", "fastscore bench summary (median; speed-up = other median / this median)")
    for line in format_table(benches, config.stash.get(_copy_key, None)):
        terminalreporter.write_line(line)
    plot = config.stash.get(_plot_key, None)
    if plot:
        terminalreporter.write_line(f"plot: {plot}")
