#!/usr/bin/env bash
# scripts/test_min.sh [VENV]   (make test-min) posttrain with every direct dependency at the lowest version
# pyproject.toml admits, so a floor that stops being true fails CI: a venv pinned by scripts/floors.py, the tests
# not marked slow, 3-step sft, reward, dpo and ppo runs on tiny-llama2, then a --dry-run of every shipped
# smollm2-135m recipe and `posttrain plan` of every Llama 2 recipe (their gated models cannot be fetched here).
set -euo pipefail
venv="${1:-.venv-min}"
root="$(pwd)"
posttrain="$root/$venv/bin/posttrain"

mkdir -p "$venv"
.venv/bin/python scripts/floors.py --extras dev,serve,eval >"$venv/floors.txt"
POSTTRAIN_CONSTRAINTS="$venv/floors.txt" bash scripts/setup.sh "$venv"
echo "test-min: every direct dependency at its floor (torch: the build setup.sh installs; see scripts/floors.py)"
"$venv/bin/python" -m pip freeze --quiet | grep -iE "^($(cut -d= -f1 "$venv/floors.txt" | paste -sd'|')|torch)==" || true

"$venv/bin/pytest" -n "${TEST_WORKERS:-2}" --dist worksteal -m "not slow" -p no:cacheprovider -q

echo "test-min: 3-step runs on tiny-llama2, then every shipped recipe checked"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
# The tiny runs take the folder names the smollm2 recipes continue from, so those recipes can be dry-run too.
tiny=(--set model.name=tiny-llama2 --set model.chat_template=llama2 --set train.max_steps=3)
"$posttrain" sft smollm2-135m/sft "${tiny[@]}"
"$posttrain" reward smollm2-135m/reward "${tiny[@]}"
"$posttrain" dpo smollm2-135m/dpo --set train.max_steps=3 --output-dir runs/tiny-dpo
"$posttrain" ppo smollm2-135m/ppo --set ppo.steps=3 --set ppo.value_warmup_steps=0 --set ppo.eval_prompts=null --output-dir runs/tiny-ppo
"$posttrain" recipes | awk '$1 ~ /^(smollm2|llama2)/ {print $1, $2}' >recipes.txt
while read -r name method; do
  case "$name" in
    smollm2-135m/*) "$posttrain" "$method" "$name" --dry-run --output-dir "dry/$name" >/dev/null ;;
    *) "$posttrain" plan "$name" >/dev/null ;;
  esac
  echo "test-min: checked $name"
done <recipes.txt
echo "test-min: passed"
