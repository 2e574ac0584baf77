"""The reports end to end on small settings: the demo (its table, PNG and sample quality
against a bound that wrong samplers exceed), `bench` (smoke run, --compare), `profile`
(traces, per-op table without double counting)."""

import json
import os
import platform

import pytest
import torch

from fastscore import __main__ as cli
from fastscore import bench, demo, profile

# Quality bound of the demo test: energy distance to the true law at 1024 points after 200
# training steps. Its sampling s.e. there is ~0.05 (8 blocks of 128), so 0.3 is ~6 s.e.
# above a perfect sampler; a sampler that misses a mode or never leaves the prior scores > 1.
ED_BOUND = 0.3
MODE_BOUND = 0.15  # total variation of 3 mode weights; its s.e. at 1024 points is ~0.02


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    png = tmp_path_factory.mktemp("demo") / "demo.png"
    report = demo.run(train_steps=200, samples=1024, steps=10, datasets=("mixture",), png=str(png), timing_steps=3,
                      progress=False)
    return report, png


def test_demo_writes_its_table_and_png(demo_report, capsys):
    report, png = demo_report
    assert png.is_file() and png.stat().st_size > 10_000
    demo.print_table(report, 200, 1024, 10)
    out = capsys.readouterr().out
    for row in ("annealed Langevin", "PC (reverse diffusion + Langevin)", "k-diffusion Euler ancestral",
                "loss fwd+bwd (network excluded)", "fresh data: the floor"):
        assert row in out
    times = report["training"]["mixture"]
    assert all(times[k] > 0 for k in ("loss fused", "loss eager", "step fused", "step eager"))


def test_demo_samples_are_close_to_the_truth(demo_report):
    report, _ = demo_report
    assert len(report["sampling"]) == 3
    for r in report["sampling"]:
        assert r.energy[0] < ED_BOUND, r
        assert r.mode_error < MODE_BOUND, r
        assert r.fused_free_s > 0 and r.eager_free_s > 0 and 0 <= r.network_share <= 1


def test_the_quality_bound_rejects_wrong_samplers():
    gmm = demo.three_modes()
    truth = gmm.sample(1024, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    wrong = {"the prior": torch.randn(1024, 2, generator=g) * demo.SIGMA_MAX,
             "one mode": gmm.means[2] + gmm.std * torch.randn(1024, 2, generator=g),
             "too wide": gmm.sample(1024, g) * 1.5}
    for name, x in wrong.items():
        assert demo.energy_distance(x, truth)[0] > ED_BOUND, name


def test_energy_distance_is_zero_in_law_and_positive_apart():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4096, 2, generator=g), torch.randn(4096, 2, generator=g)
    e, se = demo.energy_distance(x, y)
    assert abs(e) < 4 * se + 1e-3
    e2, se2 = demo.energy_distance(x + 0.5, y)
    assert e2 > 10 * se2
    with pytest.raises(ValueError, match="points"):
        demo.energy_distance(x[:10], y[:10])


def test_demo_rejects_an_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        demo.run(train_steps=1, samples=64, steps=1, datasets=("mixture",), png=None, backend="nope")


# --------------------------------------------------------------------------- bench


def test_bench_smoke_runs_the_suite(tmp_path):
    rc = bench.run(out=str(tmp_path), smoke=True, select="test_op and langevin_step_ and 2x4096")
    assert rc == 0


def _bench_json(medians):
    return {"benchmarks": [{"fullname": name, "name": name, "stats": {"median": m}} for name, m in medians.items()],
            "machine_info": {"cpu": {"brand_raw": "cpu A"}}}


def test_bench_compare_flags_regressions(tmp_path, capsys):
    old = _bench_json({"a": 1e-3, "b": 2e-3, "gone": 1e-3})
    new = _bench_json({"a": 1.05e-3, "b": 2.6e-3, "new": 1e-3})
    lines, regressions = bench.compare(old, new, 0.10)
    assert regressions == 1
    assert any(line.startswith("b") and "REGRESSION" in line for line in lines)
    assert not any(line.startswith("a") and "REGRESSION" in line for line in lines)
    new["machine_info"]["cpu"]["brand_raw"] = "cpu B"
    assert any("different CPUs" in line for line in bench.compare(old, new, 0.10)[0])


# --------------------------------------------------------------------------- profile


def test_profile_writes_traces_and_a_table(tmp_path, capsys):
    results = profile.run(str(tmp_path / "trace.json"), size="8x3x8x8", steps=5)
    out = capsys.readouterr().out
    assert len(results) == 3
    want = [{"langevin_corrector_", "step_"}, {"combine"}, {"perturb", "dsm_loss", "dsm_loss_backward"}]
    for (name, rows, path), ops_wanted in zip(results, want):
        trace = json.loads(open(path).read())
        assert any(e.get("name", "").startswith("fastscore::") for e in trace["traceEvents"])
        names = {r["op"] for r in rows}
        assert ops_wanted <= names, (name, names)
        assert sum(r["share"] for r in rows) >= 1 - 1e-9  # the ops plus "everything else" cover the phase
        for r in rows[:-1]:
            assert r["calls"] > 0
            assert r["op"].endswith("_backward") or (r["bytes"] > 0 and r["GBps"] > 0), r  # C++ nodes log none
        assert name.split(",")[0] in out
    assert "everything else" in out


def test_profile_counts_a_nested_label_once():
    with torch.profiler.profile() as prof:
        with torch.profiler.record_function("fastscore::outer"):
            with torch.profiler.record_function("fastscore::inner"):
                torch.ones(4).sum()
        with torch.profiler.record_function("fastscore::alone"):
            pass
    names = sorted(e.name for e in profile.outermost_ops(prof.events()))
    assert names == ["fastscore::alone", "fastscore::outer"]


def test_cli_parses_every_command(monkeypatch):
    seen = {}
    monkeypatch.setattr(profile, "run", lambda *a: seen.setdefault("profile", a))
    monkeypatch.setattr(bench, "run", lambda *a, **k: seen.setdefault("bench", (a, k)) and 0)
    cli.main(["profile", "--size", "2x3", "--steps", "4"])
    assert seen["profile"] == ("fastscore_trace.json", "2x3", 4)
    assert cli.main(["bench", "--smoke", "-k", "x", "--compare", "old.json"]) == 0
    assert seen["bench"][1]["compare_to"] == "old.json" and seen["bench"][1]["smoke"]


def test_cpu_name_names_family_model_and_vector_isa():
    from fastscore import backends

    zen4 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
            "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma avx512f avx512vl\n\n"
            "processor\t: 1\nmodel name\t: something else\n")
    assert backends.cpu_name(zen4) == "AMD EPYC (family 25 model 17, avx512f)"
    zen3 = zen4.replace("model\t\t: 17", "model\t\t: 1").replace(" avx512f avx512vl", "")
    assert backends.cpu_name(zen3) == "AMD EPYC (family 25 model 1, avx2)"
    arm = "processor\t: 0\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x41\n"
    assert backends.cpu_name(arm).endswith("(sve)")
    assert backends.cpu_name("model name\t: Intel(R) Xeon(R) Processor\n") == "Intel(R) Xeon(R) Processor"
    assert backends.cpu_name("") == (platform.processor() or platform.machine())  # no fields: the platform's name
    if os.path.exists("/proc/cpuinfo"):  # the default reads this machine's file
        with open("/proc/cpuinfo") as f:
            assert backends.cpu_name() == backends.cpu_name(f.read())
