#!/usr/bin/env bash
# Installs what gaussfield needs to build and test into the current Python ($PYTHON,
# default python3), and only what is missing, so that it also works offline on a machine
# that already has it all (the GPU machine).  torch: 2.13.0 when absent (on a CUDA
# machine, install the CUDA build of torch you want first).
set -euo pipefail
PY=${PYTHON:-python3}

missing=()
have() { "$PY" -c "import $1" >/dev/null 2>&1; }
have torch || missing+=("torch==2.13.0")
have numpy || missing+=("numpy")
have pytest || missing+=("pytest")
have hypothesis || missing+=("hypothesis")
have matplotlib || missing+=("matplotlib")  # the pictures of the example and the benchmark
have plyfile || missing+=("plyfile")  # gaussfield.io's 3DGS scene reader
have tqdm || missing+=("tqdm")  # the training example's progress bar
have scikit_build_core || missing+=("scikit-build-core>=0.10")
command -v ninja >/dev/null 2>&1 || have ninja || missing+=("ninja")
# CMake 3.24 or newer
if ! cmake_version=$(cmake --version 2>/dev/null | head -1 | grep -oE '[0-9]+\.[0-9]+'); then
  missing+=("cmake>=3.24")
elif [ "$(printf '%s\n3.24\n' "$cmake_version" | sort -V | head -1)" != "3.24" ]; then
  missing+=("cmake>=3.24")
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  "$PY" -m pip install --quiet "${missing[@]}"
else
  echo "setup: everything is already installed"
fi
"$PY" -c "import torch; print('setup: torch', torch.__version__, '| CUDA available:', torch.cuda.is_available())"
