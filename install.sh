#!/usr/bin/env bash
# Installs modulm and its test dependencies into the current Python environment.
# torch is installed first, pinned to the CPU build this project is developed on, only where no
# torch is present: an unpinned requirement on a machine without torch would pull multi-GB CUDA builds.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
# dev: the test tools; ecosystem-test: the optional extras (export, trackers, plots, Optuna) so their tests run;
# docs: pdoc (small, pure Python) for the API reference that CI builds.
"$PYTHON" -m pip install --quiet -e ".[dev,ecosystem-test,docs]"
