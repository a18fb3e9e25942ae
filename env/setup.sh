#!/usr/bin/env bash
# Create ./.venv with the pinned CPU stack, install sda_lib (editable) and register a Jupyter kernel.
# pip resolves pyproject.toml's dependencies (and the extras in SDA_EXTRAS, default lab,test) with
# env/requirements*.txt as constraints, then `pip check`: an undeclared or conflicting dependency
# fails here, not in a notebook. SDA_EXTRAS=lab,test,deepspeed adds DeepSpeed for the ZeRO-2 configs.
# Idempotent: when nothing in env/, pyproject.toml or SDA_EXTRAS changed since the last run, it
# returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
extras=${SDA_EXTRAS:-lab,test}
venv=.venv
stamp=$venv/.sda-setup
want=$( (cat env/requirements-torch.txt env/requirements.txt pyproject.toml env/setup.sh; echo "$extras") \
  | sha256sum | cut -c1-16)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  echo "env: $venv is up to date"
  exit 0
fi

echo "env: setting up $venv with extras [$extras] (a few minutes on first run)"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip="$venv/bin/python -m pip --disable-pip-version-check"
$pip install --quiet -r env/requirements-torch.txt   # first, so nothing below can pull a CUDA build
$pip install --quiet -c env/requirements-torch.txt -c env/requirements.txt -e ".[$extras]"
$pip check
"$venv/bin/python" -m ipykernel install --sys-prefix --name sda-workbench \
  --display-name "Python (sda-workbench)" >/dev/null
echo "$want" > "$stamp"
echo "env: ready ($("$venv/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
