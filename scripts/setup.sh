#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs what gaussfield needs to build and test into the current Python ($PYTHON,
# default python3), and only what is missing, so that it also works offline on a machine
# that already has it all (the GPU machine).  What is needed is pyproject.toml's: the
# build tools, the dependencies and the extras in $EXTRAS (default: test, which takes in
# examples), as scripts/missing_requirements.py reads them.  torch: 2.13.0 when absent
# (on a CUDA machine, install the CUDA build of torch you want first; an installed torch
# is left alone).
set -euo pipefail
PY=${PYTHON:-python3}
EXTRAS=${EXTRAS:-test}
cd "$(dirname "$0")/.."

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing torch==2.13.0"
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
missing=$("$PY" scripts/missing_requirements.py --extras "$EXTRAS" --except torch)
if [ -n "$missing" ]; then
  echo "setup: installing" $missing
  # (word splitting on purpose: one requirement a line, none with spaces)
  # shellcheck disable=SC2086
  "$PY" -m pip install --quiet $missing
else
  echo "setup: everything is already installed"
fi
"$PY" -c "import torch; print('setup: torch', torch.__version__, '| CUDA available:', torch.cuda.is_available())"
