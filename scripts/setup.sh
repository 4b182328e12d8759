#!/usr/bin/env bash
# Create .venv/ with geomtrace and everything it needs, on a fresh machine with Python >= 3.11.
# The CPU build of torch 2.13.0 is installed first, so that pip never pulls the multi-GB CUDA
# packages; setuptools<81 because lang2vec 1.1.2 imports pkg_resources.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }
pip install torch==2.13.0 'setuptools<81' wheel
pip install -e '.[test,corpus]'
echo "geomtrace is installed in .venv/ (activate with: source .venv/bin/activate)" >&2
