#!/usr/bin/env bash
# Install smoke: build fastscore from a clean copy of the checkout (tracked and untracked
# files, none of the build outputs) in two throwaway venvs, the way a new user would, then
# import it and run one tiny sampler in each:
#   A  the pip that Python ships (ensurepip), with `wheel` installed, EDITABLE, extension built
#      (the combination that broke: pip 23.2 + new setuptools + wheel + -e)
#   B  the newest pip and setuptools, no `wheel`, NON-EDITABLE, FASTSCORE_PYTHON_ONLY=1
#      (the wheel's layout and the no-extension fallback; the compile itself is covered by A)
# torch is always the pinned torch of requirements.txt (-c): never a floating torch.
# Downloads come from pip's cache. Usage: bash .ci/install_smoke.sh [A|B ...] (default: A B)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python_bin=${PYTHON:-$(command -v python3.11 || command -v python3)}
work=$(mktemp -d "${TMPDIR:-/tmp}/fastscore-smoke.XXXXXX")
trap 'rm -rf "$work"' EXIT
pipq=(-m pip install --quiet --disable-pip-version-check --no-compile -c "$root/requirements.txt")

clean_copy() {  # the checkout as git sees it (tracked + untracked), without ignored files: build/, *.so, .venv
  mkdir -p "$1"
  git -C "$root" ls-files -z --cached --others --exclude-standard \
    | tar -C "$root" --null -T - --ignore-failed-read -cf - | tar -C "$1" -xf -
}

smoke() {  # $1 venv, $2 1 if the extension must be there; runs outside the source tree
  (cd "$work" && EXPECT_EXT=$2 "$1/bin/python" - <<'EOF'
import importlib.metadata, os, sys, warnings
warnings.simplefilter("ignore")  # the no-extension warning is expected in B
import torch
import fastscore
assert "triton" not in sys.modules, "import fastscore imported triton"
for name in ("ops", "sde", "samplers", "losses", "likelihood", "adapters"):
    assert name in dir(fastscore), name
    getattr(fastscore, name)
import fastscore.kernels  # installed from kernels/ (package_dir)
from fastscore import backends
want = os.environ["EXPECT_EXT"] == "1"
assert backends.HAS_EXTENSION == want, backends.EXTENSION_ERROR
if want:
    import fastscore._C  # noqa: F401
assert importlib.metadata.version("fastscore") == fastscore.__version__
ve = fastscore.sde.VESDE(sigma_max=5.0, N=5)
x = fastscore.samplers.pc_sample(lambda x, t: -x, ve, (16, 2), seed=0)
with fastscore.use_backend("reference"):
    ref = fastscore.samplers.pc_sample(lambda x, t: -x, ve, (16, 2), seed=0)
assert x.shape == (16, 2) and torch.isfinite(x).all() and torch.equal(x, ref)
print(f"   ok: fastscore {fastscore.__version__} from {os.path.dirname(fastscore.__file__)}, "
      f"backends {fastscore.available_backends()}, torch {torch.__version__}")
EOF
  )
}

versions() { "$1/bin/python" -c 'import importlib.metadata as m
def v(p):
    try: return m.version(p)
    except m.PackageNotFoundError: return "absent"
print("   pip", v("pip"), "setuptools", v("setuptools"), "wheel", v("wheel"))'; }

run_a() {
  echo "install smoke A: shipped pip + wheel, editable, extension"
  local t0=$SECONDS
  "$python_bin" -m venv "$work/a"
  "$work/a/bin/python" "${pipq[@]}" torch numpy ninja setuptools wheel
  versions "$work/a"
  clean_copy "$work/src-a"
  (cd "$work/src-a" && env -u FASTSCORE_PYTHON_ONLY "$work/a/bin/python" "${pipq[@]}" --no-build-isolation -e .)
  smoke "$work/a" 1
  echo "   A took $((SECONDS - t0)) s"
}

run_b() {
  echo "install smoke B: newest pip + setuptools, no wheel, non-editable, FASTSCORE_PYTHON_ONLY=1"
  local t0=$SECONDS
  "$python_bin" -m venv "$work/b"
  "$work/b/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile -U pip setuptools
  "$work/b/bin/python" "${pipq[@]}" torch numpy
  "$work/b/bin/python" -m pip uninstall --quiet -y wheel 2>/dev/null || true
  versions "$work/b"
  clean_copy "$work/src-b"
  (cd "$work/src-b" && FASTSCORE_PYTHON_ONLY=1 "$work/b/bin/python" "${pipq[@]}" --no-build-isolation .)
  rm -rf "$work/src-b"  # the installed copy must not need its source
  smoke "$work/b" 0
  echo "   B took $((SECONDS - t0)) s"
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(A B)
for w in "${targets[@]}"; do
  case "$w" in
    A) run_a ;;
    B) run_b ;;
    *) echo "usage: bash .ci/install_smoke.sh [A] [B]" >&2; exit 2 ;;
  esac
done
