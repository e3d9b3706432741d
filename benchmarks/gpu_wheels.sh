#!/usr/bin/env bash
# Wheels the GPU machine lacks for benchmarks/train_step.py, downloaded here into build/gpu-wheels/
# (ignored by git; carried to the GPU machine with the run). That machine (Python 3.12, x86_64) has torch,
# timm, peft, accelerate, transformers, torchmetrics, safetensors, pyyaml and numpy, but not pydantic.
# Pins: the versions of this project's virtualenv. About 2.5 MiB in all.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=build/gpu-wheels
mkdir -p "$DEST"
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5 typing_extensions==4.16.0
du -sh "$DEST"
