"""fastscore imports and works without its compiled extension, Triton or a GPU; the
environment override and `python -m fastscore info` report what serves each op."""

import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_py(code, **env):
    full_env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300)


def test_works_without_extension_and_warns_once():
    code = (
        "import sys, warnings\n"
        "sys.modules['fastscore._C'] = None  # as if the extension was never built\n"
        "sys.modules['triton'] = None\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    import torch, fastscore\n"
        "    from fastscore import ops, reference\n"
        "    z = fastscore.noise((3, 5), seed=1)\n"
        "    x = torch.zeros(3, 5); ops.langevin_step_(x, torch.ones(3, 5), 0.1, seed=2)\n"
        "    ops.perturb(x, 0.5, seed=3)\n"
        "assert torch.equal(z, reference.noise((3, 5), 1))\n"
        "assert fastscore.available_backends() == ['reference'], fastscore.available_backends()\n"
        "msgs = [str(m.message) for m in w if 'reference backend' in str(m.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "print('ok')\n"
    )
    proc = run_py(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_environment_override_selects_the_backend():
    proc = run_py("import fastscore; print(fastscore.get_backend())", FASTSCORE_BACKEND="reference")
    assert proc.stdout.strip() == "reference", proc.stderr[-2000:]
    proc = run_py("import fastscore", FASTSCORE_BACKEND="gpu-please")
    assert proc.returncode != 0 and "unknown backend" in proc.stderr


def test_info_reports_versions_build_and_backends():
    proc = subprocess.run([sys.executable, "-m", "fastscore", "info"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for needle in ("torch", "triton", "extension", "cpu", "cuda", "serves"):
        assert needle in proc.stdout


def test_info_into_a_pipe_closed_early_exits_without_a_traceback():
    proc = subprocess.run(f"{shlex.quote(sys.executable)} -m fastscore info | head -n 1", shell=True,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    assert proc.stdout.startswith("fastscore "), proc.stdout
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr[-2000:]


def test_profile_command_prints_a_per_op_table(tmp_path):
    trace = tmp_path / "trace.json"
    proc = subprocess.run([sys.executable, "-m", "fastscore", "profile", "--out", str(trace), "--size", "4x8"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "langevin_corrector_" in proc.stdout and "dsm_loss" in proc.stdout
    assert all((tmp_path / f"trace.{k}.json").stat().st_size > 0 for k in range(3))  # one trace per phase


# ------------------------------------------------------------------ layout and packaging
# SPEC "Layout": `import fastscore` is cheap (no compiled code, Triton or GPU needed) and its
# public submodules are attributes of the package; pyproject.toml holds the metadata.

HEAVY = ("triton", "matplotlib", "tqdm", "diffusers", "scipy")


def test_import_is_cheap_and_every_public_submodule_is_an_attribute():
    code = (
        "import importlib.util, sys\n"
        "import torch  # torch itself may import some (torch.hub imports tqdm when installed)\n"
        "before = set(sys.modules)\n"
        "import fastscore\n"
        f"heavy = sorted(m for m in set(sys.modules) - before if m.split('.')[0] in {HEAVY!r})\n"
        "assert not heavy, f'import fastscore imported {heavy}'\n"
        "assert 'triton' not in sys.modules\n"
        "assert 'fastscore.kernels' not in sys.modules\n"
        "listed = dir(fastscore)\n"
        "for core in ('ops', 'sde', 'samplers', 'losses', 'likelihood', 'adapters'):\n"
        "    assert core in fastscore.SUBMODULES and core in listed, core\n"
        "for name in fastscore.SUBMODULES:\n"
        "    exists = importlib.util.find_spec(f'fastscore.{name}') is not None\n"
        "    assert (name in listed) == exists, (name, exists)\n"
        "    if not exists:\n"
        "        assert not hasattr(fastscore, name), name\n"
        "        continue\n"
        "    try:\n"
        "        mod = getattr(fastscore, name)\n"
        "    except ImportError as e:  # a missing optional dependency: must name the extra\n"
        "        assert 'fastscore[' in str(e), str(e)\n"
        "        continue\n"
        "    assert mod is sys.modules[f'fastscore.{name}'], name\n"
        "assert callable(fastscore.samplers.pc_sample) and callable(fastscore.losses.anneal_dsm)\n"
        "assert callable(fastscore.likelihood.log_likelihood) and callable(fastscore.adapters.from_denoiser)\n"
        "assert fastscore.sde.VPSDE().N > 0\n"
        "print('ok')\n"
    )
    proc = run_py(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_a_declared_submodule_that_does_not_exist_yet_breaks_nothing():
    code = (
        "import fastscore\n"
        "fastscore.SUBMODULES += ('not_written_yet',)\n"
        "assert 'not_written_yet' not in dir(fastscore)\n"
        "assert not hasattr(fastscore, 'not_written_yet')\n"
        "try:\n"
        "    fastscore.not_written_yet\n"
        "except AttributeError as e:\n"
        "    assert 'not_written_yet' in str(e)\n"
        "try:\n"
        "    fastscore.no_such_name\n"
        "except AttributeError as e:\n"
        "    assert 'no_such_name' in str(e)\n"
        "print('ok')\n"
    )
    proc = run_py(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_a_missing_optional_dependency_is_one_import_error_naming_the_extra():
    code = (
        "import sys\n"
        "for m in ('tqdm', 'tqdm.auto', 'matplotlib', 'diffusers'):\n"
        "    sys.modules[m] = None  # as if not installed\n"
        "import torch, fastscore\n"
        "from fastscore import _optional, demo\n"
        "try:\n"
        "    fastscore.samplers.langevin(lambda x, t: -x, torch.zeros(2, 2), 0.1, 2, progress=True)\n"
        "    raise SystemExit('progress=True without tqdm did not fail')\n"
        "except ImportError as e:\n"
        "    assert \"pip install 'fastscore[progress]'\" in str(e) and e.__cause__ is None, str(e)\n"
        "fastscore.samplers.langevin(lambda x, t: -x, torch.zeros(2, 2), 0.1, 2)  # no bar: no tqdm needed\n"
        "try:\n"
        "    _optional.require('diffusers', 'fastscore.diffusers')\n"
        "except ImportError as e:\n"
        "    assert \"pip install 'fastscore[diffusers]'\" in str(e), str(e)\n"
        "demo.plot('never.png', {})\n"
    )
    proc = run_py(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no PNG written" in proc.stdout and "pip install 'fastscore[plot]'" in proc.stdout, proc.stdout


def test_an_installed_but_broken_optional_dependency_shows_its_own_error(tmp_path):
    (tmp_path / "matplotlib").mkdir()
    (tmp_path / "matplotlib" / "__init__.py").write_text("import a_module_nobody_has_7\n")
    code = (
        "from fastscore import _optional\n"
        "try:\n"
        "    _optional.require('matplotlib', 'the demo PNG')\n"
        "except ModuleNotFoundError as e:\n"
        "    assert e.name == 'a_module_nobody_has_7' and 'fastscore[' not in str(e), str(e)\n"
        "print('ok')\n"
    )
    proc = run_py(code, PYTHONPATH=str(tmp_path) + os.pathsep + ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def _pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _version_tuple(v):
    return tuple(int(p) for p in v.split("+")[0].split(".")[:3] if p.isdigit())


def test_pyproject_declares_metadata_extras_and_keeps_torch_the_users():
    meta = _pyproject()
    build = meta["build-system"]
    assert build["build-backend"] == "setuptools.build_meta"
    assert not any(r.split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip() == "torch"
                   for r in build["requires"]), "torch must not be a build requirement (--no-build-isolation)"
    project = meta["project"]
    assert project["name"] == "fastscore" and project["requires-python"] == ">=3.10"
    torch_req = [d for d in project["dependencies"] if d.startswith("torch")]
    assert len(torch_req) == 1 and torch_req[0].startswith("torch>="), torch_req  # a floor, never a pin
    floor = _version_tuple(torch_req[0][len("torch>="):])
    assert any(d == "numpy" or d.startswith("numpy") for d in project["dependencies"])
    extras = project["optional-dependencies"]
    for extra in ("triton", "plot", "bench", "test", "all"):
        assert extra in extras, extra
    assert any(r.startswith("matplotlib") for r in extras["plot"])
    assert {r.split(">")[0].split("=")[0] for r in extras["bench"]} >= {"pytest-benchmark", "matplotlib"}
    everything = extras["all"][0]
    for extra in extras:
        assert extra == "all" or extra in everything, extra
    # what run.sh and CI install: torch pinned exactly, at or above the declared floor
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        pins = [line.strip() for line in f if line.strip().startswith("torch")]
    assert len(pins) == 1 and pins[0].startswith("torch=="), pins
    assert _version_tuple(pins[0][len("torch=="):]) >= floor


def test_version_has_one_source():
    import fastscore

    meta = _pyproject()
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fastscore.__version__"}
    with open(os.path.join(ROOT, "setup.py")) as f:
        assert "version=" not in f.read()
    from importlib import metadata

    try:
        installed = metadata.version("fastscore")
    except metadata.PackageNotFoundError:
        pytest.skip("fastscore is not installed here (run.sh installs it)")
    assert installed == fastscore.__version__


def _run_setup(*args, **env):
    code = ("import runpy, sys\n"
            "sys.modules['torch'] = None  # as in an isolated build environment\n"
            f"sys.argv = ['setup.py', *{list(args)!r}]\n"
            "runpy.run_path('setup.py', run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**{k: v for k, v in os.environ.items() if k != "FASTSCORE_PYTHON_ONLY"}, **env})


def test_a_build_that_cannot_import_torch_says_what_to_do_in_one_sentence():
    proc = _run_setup("--name")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "install torch first, then pip install --no-build-isolation ." in lines[0], lines
    # without the extension, the build needs no torch at all
    proc = _run_setup("--name", FASTSCORE_PYTHON_ONLY="1")
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "fastscore", proc.stderr[-2000:]
