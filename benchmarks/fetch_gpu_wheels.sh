#!/usr/bin/env bash
# Download the wheels benchmarks/gpu_check.py installs on a GPU machine that has no network: what the lent GPU
# machine's image lacks to run posttrain (it has torch, accelerate, peft, typer, pyyaml, tensorboard, pyarrow, pandas,
# fsspec and xxhash; not trl, bitsandbytes, datasets with dill and multiprocess, nor gguf), and transformers when the
# image's (IMAGE_TRANSFORMERS, 5.17.0 as last seen there) is below pyproject.toml's floor. No torch, no CUDA libraries
# beyond bitsandbytes' own. Run it where pip reaches PyPI, then carry the folder to the check:
#
#   bash benchmarks/fetch_gpu_wheels.sh .whl [PYTHON_VERSION]     # default 3.12, the GPU image's
#   python benchmarks/gpu_check.py --output gpu-check --wheels .whl
#
# The versions are those of PYTHON's environment (default .venv, where the test suite passed), else the pins below.
# The check installs a carried wheel only where the machine's version is below a floor (or missing), and checks each
# package's own requirements there; whatever is still unmet it names before starting. The folder must stay under
# 60 MiB: a GPU task carries 64 MiB in all, the working tree included.
set -euo pipefail

folder=${1:?usage: fetch_gpu_wheels.sh FOLDER [PYTHON_VERSION]}
python_version=${2:-3.12}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=python3
image_transformers=${IMAGE_TRANSFORMERS:-5.17.0}
declare -A pins=([trl]=1.16.0 [bitsandbytes]=0.50.2 [datasets]=5.2.0 [dill]=0.4.1 [multiprocess]=0.70.19 \
    [gguf]=0.19.0 [transformers]=5.24.0)

names=(trl bitsandbytes datasets dill multiprocess gguf)
# transformers only when the image's version is outside what pyproject.toml admits
if ! "$python" - "$root/pyproject.toml" "$image_transformers" <<'PY'
import sys, tomllib
from packaging.requirements import Requirement
deps = [Requirement(d) for d in tomllib.loads(open(sys.argv[1], "rb").read().decode())["project"]["dependencies"]]
wanted = next(d for d in deps if d.name == "transformers")
sys.exit(0 if wanted.specifier.contains(sys.argv[2]) else 1)
PY
then
    echo "the GPU image's transformers $image_transformers is below pyproject.toml's floor: carrying transformers"
    names+=(transformers)
fi

specs=()
for name in "${names[@]}"; do
    version=$("$python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || echo "${pins[$name]}")
    specs+=("$name==$version")
done

mkdir -p "$folder"
# --no-deps: exactly these wheels; --platform: bitsandbytes' manylinux x86_64 build, which holds its CUDA kernels
"$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$folder" \
    --python-version "$python_version" --implementation cp \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    "${specs[@]}"

ls -l "$folder"/*.whl | awk '{printf "%8.1f MiB  %s\n", $5 / 1048576, $NF}'
total=$(du -cb "$folder"/*.whl | tail -1 | cut -f1)
awk -v total="$total" 'BEGIN {printf "%8.1f MiB  in all\n", total / 1048576}'
if [ "$total" -gt $((60 * 1048576)) ]; then
    echo "over 60 MiB: with the working tree, more than a GPU task can carry (64 MiB)" >&2
    exit 1
fi
