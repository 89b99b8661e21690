#!/usr/bin/env bash
# scripts/setup.sh [VENV]   a virtual environment with posttrain installed (editable), its test tools, the
#                           serve extra (gradio) and the eval extra (lm-eval, vaderSentiment, matplotlib).
# scripts/setup.sh --browser   Debian's chromium, for the browser test of `posttrain serve`, when it is missing.
# PyTorch: a CUDA machine gets PyPI's default (CUDA) build; a CPU-only machine gets the CPU build, because PyPI's
# default Linux wheel is a multi-GB CUDA build. An environment that already has torch (Colab) keeps it.
set -euo pipefail

if [ "${1:-}" = "--browser" ]; then
  # playwright drives the system's chromium: it cannot download a browser of its own here.
  [ -x /usr/bin/chromium ] && exit 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the browser test of posttrain serve"
    log="$(mktemp)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$log" 2>&1; then
      tail -n 20 "$log"
      echo "setup: apt-get could not install chromium (above)" >&2
      exit 1
    fi
    rm -f "$log"
  else
    echo "setup: /usr/bin/chromium is missing and cannot be installed here (needs root and apt-get);" \
      "the browser test of posttrain serve will fail until it is installed"
  fi
  exit 0
fi

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
# POSTTRAIN_CONSTRAINTS: a pip constraints file (make test-min passes one that pins every floor)
"${pip[@]}" -e ".[dev,serve,eval]" ${POSTTRAIN_CONSTRAINTS:+-c "$POSTTRAIN_CONSTRAINTS"}
echo "setup: done. Activate with: source $venv/bin/activate"
