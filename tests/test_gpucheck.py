"""python -m fastscore gpucheck cannot rot: its dry run (the same code paths on the CPU:
every CPU backend against the reference, capture of every capturable sampler, op and
sampler timings, the JSON and the markdown) passes end to end; a failing check makes it
exit 1 and names the check; without a GPU the real run exits 2 and says why."""

import json
import os
import subprocess
import sys

import pytest
import torch

import fastscore
from fastscore import gpucheck

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dry_run_end_to_end(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-m", "fastscore", "gpucheck", "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpucheck.json").read_text())
    assert report["dry_run"] and report["device"] == "cpu"
    names = [c["name"] for c in report["checks"]]
    assert all(c["ok"] for c in report["checks"]) and len(names) > 40
    for backend in [b for b in fastscore.available_backends("cpu") if b != "reference"]:
        assert f"{backend}: noise 6x5x7 equals the CPU stream" in names
        assert f"{backend}: combine (3 ys, out2) float32 6x5x7 vs reference" in names
    assert sum(n.startswith("capture: ") for n in names) == len(gpucheck.capturable_runs("cpu", (2, 2)))
    assert {r["op"] for r in report["ops"]} >= {"langevin_step_", "step_", "perturb", "noise", "langevin_corrector_"}
    assert {(r["sampler"], r["score"]) for r in report["samplers"]} >= {
        ("annealed_langevin", "zero-cost"), ("pc_sample (VE, RD + Langevin)", "conv net")}
    assert all(r["fastscore captured us/step"] > 0 for r in report["samplers"])
    md = (tmp_path / "gpucheck.md").read_text()
    assert "## Checks: " in md and "| langevin_step_ | 4x3x8x8 |" in md and "| annealed_langevin | 4x3x8x8 |" in md


def test_a_failing_check_fails_the_run(tmp_path, monkeypatch):
    def broken(device, shape):
        wrong = lambda: (torch.zeros(3) if fastscore.get_backend() == "reference" else torch.ones(3),)  # noqa: E731
        return [("planted mismatch", torch.float32, wrong, True)]

    monkeypatch.setattr(gpucheck, "op_cases", broken)
    monkeypatch.setattr(gpucheck, "capturable_runs", lambda device, shape: [])
    monkeypatch.setattr(gpucheck, "time_ops", lambda *a, **k: None)
    monkeypatch.setattr(gpucheck, "time_samplers", lambda *a, **k: None)
    assert gpucheck.run(str(tmp_path), dry_run=True) == 1
    report = json.loads((tmp_path / "gpucheck.json").read_text())
    failed = [c for c in report["checks"] if not c["ok"]]
    assert failed and all("planted mismatch" in c["name"] and "not bitwise" in c["detail"] for c in failed)
    assert "FAIL cpp: planted mismatch" in (tmp_path / "gpucheck.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the real run is gpucheck itself")
def test_without_a_gpu_the_real_run_exits_2(tmp_path, capsys):
    assert gpucheck.run(str(tmp_path)) == 2
    assert "no CUDA device" in capsys.readouterr().err
