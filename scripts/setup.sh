#!/usr/bin/env bash
# Create a virtual environment with posttrain installed (editable, with the test tools).
# PyTorch: a CUDA machine gets PyPI's default (CUDA) build; a CPU-only machine gets the CPU build, because PyPI's
# default Linux wheel is a multi-GB CUDA build. An environment that already has torch (Colab) keeps it.
set -euo pipefail
venv="${1:-.venv}"
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet)

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing PyTorch (CUDA build)"
    "${pip[@]}" torch
  else
    echo "setup: no GPU found, installing the CPU build of PyTorch"
    cpu_index=()  # PyTorch's CPU index, when this machine can reach it (else pip's own configured sources)
    if "$venv/bin/python" -c "import socket; socket.getaddrinfo('download.pytorch.org', 443)" 2>/dev/null; then
      cpu_index=(--extra-index-url https://download.pytorch.org/whl/cpu)
    fi
    "${pip[@]}" "torch==2.13.0" ${cpu_index[@]+"${cpu_index[@]}"}
  fi
fi
echo "setup: installing posttrain and its dependencies into $venv"
"${pip[@]}" -e ".[dev]"
echo "setup: done. Activate with: source $venv/bin/activate"
