#!/usr/bin/env bash
# Create ./.venv with the pinned CPU stack, install sda_lib (editable) and register a Jupyter kernel.
# Idempotent: when nothing in env/ or pyproject.toml changed since the last run, it returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=.venv
stamp=$venv/.sda-setup
want=$(cat env/requirements-torch.txt env/requirements.txt pyproject.toml env/setup.sh | sha256sum | cut -c1-16)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  echo "env: $venv is up to date"
  exit 0
fi

echo "env: setting up $venv (a few minutes on first run)"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip="$venv/bin/python -m pip install --quiet --disable-pip-version-check"
$pip -r env/requirements-torch.txt   # first, so nothing below can pull a CUDA build
$pip -r env/requirements.txt
$pip --no-deps -e .
"$venv/bin/python" -m ipykernel install --sys-prefix --name sda-workbench \
  --display-name "Python (sda-workbench)" >/dev/null
echo "$want" > "$stamp"
echo "env: ready ($("$venv/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
