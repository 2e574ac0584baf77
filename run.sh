#!/usr/bin/env bash
# Sets up (or reuses) a virtual environment with everything fastscore needs, builds the
# extension fastscore._C, then runs one job:
#   bash run.sh demo     the main job: python -m fastscore demo
#   bash run.sh test     the test suite (pytest tests)
#   bash run.sh bench    python -m fastscore bench: the pytest-benchmark suite (table, JSON, PNG)
#   bash run.sh info     what was built and which backend serves which op
# Extra arguments go to the job. FASTSCORE_VENV picks the venv folder (default .venv).
set -euo pipefail
cd "$(dirname "$0")"
job=${1:-demo}
shift || true

venv=${FASTSCORE_VENV:-.venv}
python_bin=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x "$venv/bin/python" ]; then
  "$python_bin" -m venv "$venv"
fi
py="$venv/bin/python"

# Install requirements only when they changed since the last install into this venv; the
# peers (requirements-peers.txt) without their dependencies, which would pull a CUDA torch.
stamp="$venv/.fastscore-requirements"
if ! cat requirements.txt requirements-peers.txt | cmp -s - "$stamp"; then
  "$py" -m pip install --quiet --disable-pip-version-check -r requirements.txt
  "$py" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-peers.txt
  cat requirements.txt requirements-peers.txt > "$stamp"
fi
# Editable install; rebuilds the extension when csrc/ changed (ninja makes a no-op cheap).
"$py" -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e . \
  || { echo "run.sh: building fastscore failed" >&2; exit 1; }

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
case "$job" in
  demo)  exec "$py" -m fastscore demo "$@" ;;
  test)  exec "$py" -m pytest tests -q -p no:cacheprovider "$@" ;;
  bench) exec "$py" -m fastscore bench "$@" ;;
  info)  exec "$py" -m fastscore info "$@" ;;
  *)     echo "usage: bash run.sh {demo|test|bench|info} [args...]" >&2; exit 2 ;;
esac
