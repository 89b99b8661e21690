#!/usr/bin/env bash
# Download the wheels benchmarks/gpu_check.py installs on a GPU machine that has no network: what such a machine
# (torch, transformers, accelerate and peft already there) lacks to run posttrain. No torch, no CUDA libraries
# beyond bitsandbytes' own. Run it where pip reaches PyPI, then pass the folder to the check:
#
#   bash benchmarks/fetch_gpu_wheels.sh .whl [PYTHON_VERSION]     # default 3.12
#   python benchmarks/gpu_check.py --output gpu-check --wheels .whl
#
# The versions are those of this environment's packages (the ones the test suite passed with), else the pins below.
# datasets also needs pyarrow, pandas, xxhash and fsspec; GPU images carry them (a pyarrow wheel alone is ~40 MiB),
# and gpu_check.py says so if one is missing or too old. The folder stays under 64 MiB, what a GPU task can carry.
set -euo pipefail

folder=${1:?usage: fetch_gpu_wheels.sh FOLDER [PYTHON_VERSION]}
python_version=${2:-3.12}
python=${PYTHON:-python3}
declare -A pins=([trl]=1.16.0 [bitsandbytes]=0.50.2 [datasets]=5.2.0 [dill]=0.4.1 [multiprocess]=0.70.19)

specs=()
for name in trl bitsandbytes datasets dill multiprocess; do
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
if [ "$total" -gt $((64 * 1048576)) ]; then
    echo "over 64 MiB: more than a GPU task can carry" >&2
    exit 1
fi
